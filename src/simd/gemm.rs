//! Packed operands and tile kernels of the integer and weight-only matrix products.
//!
//! The packed layouts are the same on every ISA path (a prepacked weight is valid whatever
//! path runs it); only the tile kernels differ.
//!
//! **Panel.** `NR = 16` weight rows (output features) side by side, their `k` axis split into
//! segments (groups), each a multiple of 8 long; codes are unsigned: `p = q` for unsigned
//! codes, `p = q + 2^(b-1)` for signed ones (the zero point moves with them), so every
//! product is `u8 × i8`, the operand order of `vpdpbusd`.
//! - 8-bit: per quad `t` (`k = 4t..4t+4`) 64 bytes, byte `4j + c` = `p[j][4t + c]`.
//! - 4-bit: per pair of quads `t` (`k = 8t..8t+8`) 64 bytes, byte `4j + c` =
//!   `p[j][8t + c] | p[j][8t + 4 + c] << 4`, so one 64-byte load gives two 8-bit-layout quads
//!   (low nibbles, then high nibbles).
//!
//! **Rows.** Up to `MR` activation rows of `kp` int8 codes each (row stride `kp`), padded with
//! zeros exactly where the panel's segments are.
//!
//! **Accumulation order** (fixed, so that every path gives the same bits):
//! - integer mode, per segment `s` in order: `acc = fma(scale[s][j], raw as f32, acc)`, then
//!   `acc = fma(zscale[s][j], xsum[m][s], acc)`, where `raw = Σ p·x` over the segment (exact
//!   int32: segments are at most [`MAX_SEGMENT`] long) and `zscale = -scale · zero`;
//! - float mode: four partial sums per output, `acc[k % 4] = fma(x[m][k], w[j][k], acc[k % 4])`
//!   with `w = (p - zero[s][j]) * scale[s][j]` (as `dequantize` computes it), then
//!   `(acc[0] + acc[1]) + (acc[2] + acc[3])`.

/// Weight rows (output features) per panel: one 512-bit vector of int32 or float32 lanes.
pub const NR: usize = 16;
/// The most activation rows in one tile.
pub const MR: usize = 8;
/// Longest segment: `255 · 128 · 65536 < 2^31`, so a segment's `u8 × i8` sum cannot overflow.
pub const MAX_SEGMENT: usize = 65536;
/// Segments are padded to a multiple of this many `k`.
pub const K_ALIGN: usize = 8;

/// Int32 output tile of `dot_tile`, `[MR][NR]`.
pub type TileI32 = [i32; MR * NR];
/// Float32 output tile of the `linear` tiles, `[MR][NR]`.
pub type TileF32 = [f32; MR * NR];

/// `dot_tile(panel, x, out)`: `out[m * NR + j] = Σ_k panel_j[k] · x_m[k]` (wrapping int32) for
/// the `x.rows` rows, over an 8-bit panel of `x.kp` values of `k`; other rows of `out` are
/// unspecified.
pub type DotTile = fn(panel: &[u8], x: &Rows<i8>, out: &mut TileI32);

/// Panels and rows of the wide integer tile ([`DotTileWide`]).
pub const WIDE_PANELS: usize = 4;
pub const WIDE_ROWS: usize = 6;

/// Int32 output tile of `dot_tile_wide`, `[WIDE_ROWS][WIDE_PANELS * NR]`.
pub type TileWide = [i32; WIDE_ROWS * WIDE_PANELS * NR];

/// `dot_tile_wide(panels, x, out)`: `dot_tile` over [`WIDE_PANELS`] panels at once, for up to
/// [`WIDE_ROWS`] rows: `panels` holds the 8-bit panels back to back (`x.kp * NR` bytes each),
/// and `out[m * WIDE_PANELS * NR + i * NR + j]` receives row `m`'s sum with column `j` of
/// panel `i`. Paths with enough registers for it (AVX-512) provide one; `matmul_int8` runs
/// `dot_tile` where there is none.
pub type DotTileWide = fn(panels: &[u8], x: &Rows<i8>, out: &mut TileWide);

/// The most rows of `a` for [`MatmulRows`], and the most columns per call.
pub const ROWS_M: usize = 4;
pub const ROWS_COLS: usize = 1024;

/// `matmul_rows(a, signed, m, b, (k, n), c0, out)`: for `m <= ROWS_M` rows of `a` (`[m][k]`
/// bytes, int8 when `signed`, uint8 otherwise) and columns `c0..c0 + w` of the unpacked int8
/// `b [k][n]`, where `w = out.len() / m <= ROWS_COLS`: `out[r * w + j]` receives the exact
/// `Σ_k a[r][k]·b[k][c0 + j]` (wrapping int32), plus `128·Σ_k a[r][k]` when `signed`. Streams
/// `b` once, with no packing: the small-M path of `matmul_int8` where a path has one.
pub type MatmulRows =
    fn(a: &[u8], signed: bool, m: usize, b: &[i8], kn: (usize, usize), c0: usize, out: &mut [i32]);

/// `linear_tile(panel, x, xsum, out)`: integer mode (see the module docs); `xsum` holds
/// `[x.rows][segments]` sums of the codes of each row over each segment.
pub type LinearTile = fn(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32);

/// `linear_tile_f32(panel, x, out)`: float mode (see the module docs), `x` float32 rows.
pub type LinearTileF32 = fn(panel: &Panel, x: &Rows<f32>, out: &mut TileF32);

/// `rows` activation rows of `kp` values each, row `m` at `data[m * stride..]`.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub kp: usize,
    /// Elements from one row to the next, `>= kp`.
    pub stride: usize,
}

impl<'a, T> Rows<'a, T> {
    /// Rows stored back to back (`stride == kp`).
    pub fn new(data: &'a [T], rows: usize, kp: usize) -> Self {
        Self::strided(data, rows, kp, kp)
    }

    /// Rows `stride` elements apart: a `kp`-wide window of longer rows.
    pub fn strided(data: &'a [T], rows: usize, kp: usize, stride: usize) -> Self {
        assert!((1..=MR).contains(&rows), "a tile has 1..={MR} rows");
        assert!(stride >= kp, "stride shorter than a row");
        assert!(
            data.len() >= (rows - 1) * stride + kp,
            "data shorter than the rows"
        );
        assert_eq!(kp % K_ALIGN, 0, "kp must be a multiple of {K_ALIGN}");
        Rows {
            data,
            rows,
            kp,
            stride,
        }
    }

    #[inline(always)]
    pub fn row(&self, m: usize) -> &'a [T] {
        &self.data[m * self.stride..m * self.stride + self.kp]
    }

    /// Whether every row lies inside `data` (the constructors ensure it; fields are public).
    #[inline]
    pub fn in_bounds(&self) -> bool {
        self.rows <= MR
            && self.stride >= self.kp
            && (self.rows == 0 || self.data.len() >= (self.rows - 1) * self.stride + self.kp)
    }
}

/// The row stride for activation rows of `kp` values: `kp` plus one cache line (64 bytes of
/// int8, 16 lines of float32 would be too much: 16 values) when `kp` is a multiple of 64
/// elements, so that the rows of a tile do not all fall in the same L1 set (a stride of
/// 4096 bytes put the 8 rows of a tile in one 12-way set, next to the panel).
pub fn row_stride(kp: usize) -> usize {
    if kp.is_multiple_of(64) {
        kp + 64
    } else {
        kp
    }
}

/// One packed panel of quantized weights and the grid of each of its segments.
#[derive(Clone, Copy, Debug)]
pub struct Panel<'a> {
    /// The codes, segment after segment, in the layout of `bits`.
    pub codes: &'a [u8],
    /// 8 or 4.
    pub bits: u32,
    /// Length (in `k`) of each segment, each a multiple of [`K_ALIGN`], at most
    /// [`MAX_SEGMENT`].
    pub seg_len: &'a [u32],
    /// `[segments][NR]` weight scales.
    pub scale: &'a [f32],
    /// `[segments][NR]` zero points in panel code space.
    pub zero: &'a [f32],
    /// `[segments][NR]`: `-scale · zero`.
    pub zscale: &'a [f32],
    /// `Some(z)` when every zero point of the panel is `z` (symmetric weights): then
    /// `zscale = -(scale · z)` bit for bit, and a path may compute it instead of reading
    /// `zscale` (a GEMV streaming group-32 weights then reads a sixth fewer bytes).
    pub zero_all: Option<f32>,
}

impl Panel<'_> {
    /// Bytes of codes per `k` (all `NR` rows).
    #[inline(always)]
    pub fn bytes_per_k(&self) -> usize {
        if self.bits == 4 {
            NR / 2
        } else {
            NR
        }
    }

    /// Panics unless the panel is consistent and matches rows of `kp` values: the contract
    /// every tile kernel relies on before it reads without bounds checks.
    pub fn check(&self, kp: usize) {
        assert!(
            self.bits == 8 || self.bits == 4,
            "panel bits must be 8 or 4"
        );
        let segs = self.seg_len.len();
        let mut total = 0usize;
        for &len in self.seg_len {
            let len = len as usize;
            assert!(
                len.is_multiple_of(K_ALIGN) && len <= MAX_SEGMENT,
                "bad segment length {len}"
            );
            total += len;
        }
        assert_eq!(total, kp, "segments must cover kp");
        assert_eq!(
            self.codes.len(),
            kp * self.bytes_per_k(),
            "panel codes length"
        );
        assert!(self.scale.len() == segs * NR && self.zero.len() == segs * NR);
        assert_eq!(self.zscale.len(), segs * NR);
    }
}

/// Contract of `dot_tile`, checked by every path's wrapper.
#[inline]
pub fn check_dot(panel: &[u8], x: &Rows<i8>) {
    assert!(x.in_bounds() && x.kp.is_multiple_of(4));
    assert_eq!(panel.len(), x.kp * NR, "8-bit panel length");
}

/// Contract of `dot_tile_wide`, checked by every path's wrapper.
#[inline]
pub fn check_dot_wide(panels: &[u8], x: &Rows<i8>) {
    assert!(x.in_bounds() && x.kp.is_multiple_of(4) && x.rows <= WIDE_ROWS);
    assert_eq!(panels.len(), WIDE_PANELS * x.kp * NR, "8-bit panels length");
}

/// Contract of `matmul_rows`, checked by every path's wrapper; returns the column count.
#[inline]
pub fn check_rows(
    a: &[u8],
    m: usize,
    b: &[i8],
    (k, n): (usize, usize),
    c0: usize,
    out: &[i32],
) -> usize {
    assert!((1..=ROWS_M).contains(&m) && a.len() == m * k && b.len() == k * n);
    assert!(out.len().is_multiple_of(m), "out holds whole rows");
    let w = out.len() / m;
    assert!(w <= ROWS_COLS && c0 + w <= n, "columns inside b");
    w
}

/// Contract of `linear_tile`, checked by every path's wrapper.
#[inline]
pub fn check_linear(panel: &Panel, x: &Rows<i8>, xsum: &[f32]) {
    assert!(x.in_bounds());
    panel.check(x.kp);
    assert_eq!(
        xsum.len(),
        x.rows * panel.seg_len.len(),
        "one xsum per row and segment"
    );
}

/// Code `i` (`0..NR * kq`) of one segment of a panel, `k`-major inside each 4 or 8 `k`.
#[inline(always)]
pub fn panel_code(codes: &[u8], bits: u32, j: usize, k: usize) -> u8 {
    if bits == 4 {
        let byte = codes[(k / 8) * 64 + 4 * j + (k % 4)];
        if k % 8 < 4 {
            byte & 0x0f
        } else {
            byte >> 4
        }
    } else {
        codes[(k / 4) * 64 + 4 * j + (k % 4)]
    }
}

// ---------------------------------------------------------------------------------------------
// Packing

/// `pack_panels(b, (k, n), n0, panels, kp, out)`: packs columns `n0..n0 + panels * NR` of
/// the int8 matrix `b [k][n]` (row-major) as 8-bit panels of `kp >= k` values of `k` each
/// (`kp` a multiple of 4), one after the other: `p = b + 128`, zeros past the matrix.
pub type PackPanels =
    fn(b: &[i8], kn: (usize, usize), n0: usize, panels: usize, kp: usize, out: &mut [u8]);

/// One quad of four whole panels: reads 64 bytes from each of the rows `src`, `src + n`,
/// `src + 2n`, `src + 3n` and writes the quad's 64-byte block of panel `i` at
/// `dst + i * panel_stride` for `i` in 0..4.
///
/// # Safety
/// Those reads and writes must be in bounds, and the CPU must support what the function
/// was compiled for.
pub type PackQuad4 = unsafe fn(src: *const i8, n: usize, dst: *mut u8, panel_stride: usize);

/// The portable [`PackPanels`] (SSE2 on x86_64).
pub fn pack_i8_panels(
    b: &[i8],
    kn: (usize, usize),
    n0: usize,
    panels: usize,
    kp: usize,
    out: &mut [u8],
) {
    pack_panels_with(b, kn, n0, panels, kp, out, None)
}

/// [`PackPanels`], with `quad4` (when given) packing each quad of four whole panels at once.
///
/// Rows are read once each, all panels at a time (a panel alone would touch one 16-byte
/// piece of each row, a page apart, and miss the TLB on every quad).
pub fn pack_panels_with(
    b: &[i8],
    (k, n): (usize, usize),
    n0: usize,
    panels: usize,
    kp: usize,
    out: &mut [u8],
    quad4: Option<PackQuad4>,
) {
    assert!(b.len() == k * n && n0 < n && kp >= k && kp.is_multiple_of(4));
    assert_eq!(out.len(), panels * kp * NR);
    let cols = (panels * NR).min(n - n0);
    let whole = cols / NR; // panels with all NR columns inside the matrix
    let quads = k / 4;
    // Four whole panels at a time in short runs of quads: the run's rows (each read across
    // all the panels) stay in L1, and each panel is written a few lines at a time.
    let groups = if quad4.is_some() { whole / 4 } else { 0 };
    if let Some(quad4) = quad4 {
        let mut t0 = 0;
        while t0 < quads {
            let t1 = (t0 + PACK_RUN).min(quads);
            for g in 0..groups {
                for t in t0..t1 {
                    // SAFETY: rows 4t..4t + 4 <= k and columns n0 + 64g .. + 64 <= n0 + cols
                    // <= n lie in `b`; panels 4g..4g + 4 <= panels lie in `out`.
                    unsafe {
                        quad4(
                            b.as_ptr().add(4 * t * n + n0 + 64 * g),
                            n,
                            out.as_mut_ptr().add(4 * g * kp * NR + 64 * t),
                            kp * NR,
                        )
                    };
                }
            }
            t0 = t1;
        }
    }
    for t in 0..kp / 4 {
        let first = if t < quads { 4 * groups } else { 0 };
        for p in first..panels {
            let block = &mut out[p * kp * NR + 64 * t..p * kp * NR + 64 * t + 64];
            if t < quads && p < whole {
                let src = |c: usize| &b[(4 * t + c) * n + n0 + p * NR..][..NR];
                transpose_quad([src(0), src(1), src(2), src(3)], block);
                continue;
            }
            block.fill(0);
            for c in 0..4 {
                let kk = 4 * t + c;
                if kk >= k {
                    break;
                }
                let c0 = (n0 + p * NR).min(n); // panels wholly past the matrix stay zero
                let width = NR.min(n - c0);
                for (j, &v) in b[kk * n + c0..kk * n + c0 + width].iter().enumerate() {
                    block[4 * j + c] = (v as u8) ^ 0x80;
                }
            }
        }
    }
}

/// Quads per run of `pack_panels_with`'s four-panel path.
const PACK_RUN: usize = 1;

/// One quad of a panel: `block[4j + c] = rows[c][j] + 128`.
#[inline(always)]
fn transpose_quad(rows: [&[i8]; 4], block: &mut [u8]) {
    assert!(rows.iter().all(|r| r.len() == NR) && block.len() == 64);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline; the four rows hold 16 bytes each and the
    // block 64 (asserted above).
    unsafe {
        use core::arch::x86_64::*;
        let flip = _mm_set1_epi8(-128);
        let row =
            |c: usize| _mm_xor_si128(_mm_loadu_si128(rows[c].as_ptr() as *const __m128i), flip);
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        let lo01 = _mm_unpacklo_epi8(r0, r1);
        let lo23 = _mm_unpacklo_epi8(r2, r3);
        let hi01 = _mm_unpackhi_epi8(r0, r1);
        let hi23 = _mm_unpackhi_epi8(r2, r3);
        let dst = block.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(dst, _mm_unpacklo_epi16(lo01, lo23));
        _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi16(lo01, lo23));
        _mm_storeu_si128(dst.add(2), _mm_unpacklo_epi16(hi01, hi23));
        _mm_storeu_si128(dst.add(3), _mm_unpackhi_epi16(hi01, hi23));
    }
    #[cfg(not(target_arch = "x86_64"))]
    for j in 0..NR {
        for c in 0..4 {
            block[4 * j + c] = (rows[c][j] as u8) ^ 0x80;
        }
    }
}

/// `k` per chunk of the float-mode tile: its dequantized weights (`[CHUNK][NR]` floats,
/// 16 KiB) stay in L1 while every row of the tile uses them.
const F32_CHUNK: usize = 256;

/// The float-mode tile, written once and compiled per path: each path's wrapper calls it from
/// a `#[target_feature]` function so that its loops vectorize with that path's instructions
/// (`mul_add` becomes a vector FMA). Inputs are checked by [`Panel::check`].
#[inline(always)]
pub fn linear_tile_f32_body(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    panel.check(x.kp);
    assert!(x.in_bounds());
    let bpk = panel.bytes_per_k();
    let mut acc = [[[0f32; NR]; 4]; MR];
    let mut w = [[0f32; NR]; F32_CHUNK];
    let (mut k0, mut b0) = (0usize, 0usize);
    for (s, &len) in panel.seg_len.iter().enumerate() {
        let len = len as usize;
        let codes = &panel.codes[b0..b0 + len * bpk];
        let scale: &[f32; NR] = panel.scale[s * NR..(s + 1) * NR].try_into().unwrap();
        let zero: &[f32; NR] = panel.zero[s * NR..(s + 1) * NR].try_into().unwrap();
        let mut c0 = 0;
        while c0 < len {
            let n = F32_CHUNK.min(len - c0);
            dequantize_chunk(codes, panel.bits, c0, n, scale, zero, &mut w);
            for (m, acc_m) in acc.iter_mut().enumerate().take(x.rows) {
                let xr = &x.row(m)[k0 + c0..k0 + c0 + n];
                for (x4, w4) in xr.chunks_exact(4).zip(w.chunks_exact(4)) {
                    for c in 0..4 {
                        let xv = x4[c];
                        for j in 0..NR {
                            acc_m[c][j] = xv.mul_add(w4[c][j], acc_m[c][j]);
                        }
                    }
                }
            }
            c0 += n;
        }
        k0 += len;
        b0 += len * bpk;
    }
    for (m, acc_m) in acc.iter().enumerate().take(x.rows) {
        for j in 0..NR {
            out[m * NR + j] = (acc_m[0][j] + acc_m[1][j]) + (acc_m[2][j] + acc_m[3][j]);
        }
    }
}

/// `w[k][j] = (p[j][c0 + k] - zero[j]) * scale[j]` for `k < n` (`c0`, `n` multiples of 8).
#[inline(always)]
fn dequantize_chunk(
    codes: &[u8],
    bits: u32,
    c0: usize,
    n: usize,
    scale: &[f32; NR],
    zero: &[f32; NR],
    w: &mut [[f32; NR]; F32_CHUNK],
) {
    if bits == 4 {
        for t in 0..n / 8 {
            let block: &[u8; 64] = codes[(c0 / 8 + t) * 64..][..64].try_into().unwrap();
            for c in 0..4 {
                for j in 0..NR {
                    let b = block[4 * j + c];
                    w[8 * t + c][j] = ((b & 0x0f) as f32 - zero[j]) * scale[j];
                    w[8 * t + 4 + c][j] = ((b >> 4) as f32 - zero[j]) * scale[j];
                }
            }
        }
    } else {
        for t in 0..n / 4 {
            let block: &[u8; 64] = codes[(c0 / 4 + t) * 64..][..64].try_into().unwrap();
            for c in 0..4 {
                for j in 0..NR {
                    w[4 * t + c][j] = (block[4 * j + c] as f32 - zero[j]) * scale[j];
                }
            }
        }
    }
}
