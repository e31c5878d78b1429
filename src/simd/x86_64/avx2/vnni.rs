//! AVX-VNNI tile kernels (the `avxvnni` table): the VEX-encoded `vpdpbusd` on ymm, 32
//! `u8 × i8` products into 8 int32 lanes, exact (no intermediate saturation), on the AVX2
//! registers (Intel client parts from Alder Lake on, which have no AVX-512). Layouts and the
//! accumulation order are in `simd::gemm`; everything else of this path is AVX2's.
//!
//! A 16-column panel is two ymm of int32 per row, and there are 16 ymm registers: a pass over
//! an 8-bit panel holds at most `PASS` rows (12 accumulators, two weight vectors, one
//! broadcast), over a 4-bit panel at most `PASS_NIBBLES` (8 accumulators, the block's four
//! unpacked weight vectors, two broadcasts). Rows beyond that run in further passes over the
//! same panel, or (in `linear`) the same segment, from L1. Passes of one or two rows keep a
//! second pair of accumulators per row (even and odd quads), so that a GEMV is not bound by
//! the instruction's latency. `matmul_rows` (M <= 4) streams row-major `b` and interleaves its
//! quads in registers, as the AVX-512 VNNI one does.
//!
//! Soundness: the table holding these is only handed out after the CPU check, and each safe
//! wrapper checks again (a cached load) before entering `#[target_feature]` code.

// Register arrays indexed by row read clearer as `for r in 0..R` in these kernels.
#![allow(clippy::needless_range_loop)]

use crate::simd::gemm::{self, Panel, Rows, TileF32, TileI32, TileWide, NR, WIDE_PANELS};
use core::arch::x86_64::*;
use core::ptr::read_unaligned;

/// The most rows of one pass over a panel (2 accumulators each).
const PASS: usize = 6;

/// How far ahead (bytes) the one- and two-row passes prefetch the panel they stream.
const PF_DIST: usize = 4096;

#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32(read_unaligned(p as *const i32))
}

#[inline(always)]
unsafe fn dp(acc: __m256i, u8s: __m256i, i8s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, u8s, i8s)
}

crate::simd::safe_wrappers! {
    cpu: crate::simd::probe::has_avxvnni(), else: crate::simd::scalar;

    fn dot_tile(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) => dot_vnni(panel, x, out);

    fn dot_tile_wide(panels: &[u8], x: &Rows<i8>, out: &mut TileWide) =>
        dot_wide_vnni(panels, x, out);

    fn linear_tile(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) => {
        if panel.bits == 4 {
            linear_w4_vnni(panel, x, xsum, out)
        } else {
            linear_w8_vnni(panel, x, xsum, out)
        }
    };

    fn matmul_rows(
        a: &[u8],
        signed: bool,
        m: usize,
        b: &[i8],
        kn: (usize, usize),
        c0: usize,
        out: &mut [i32],
    ) => {
        match (m, signed) {
            (1, false) => rows_vnni::<1, false>(a, b, kn, c0, out),
            (2, false) => rows_vnni::<2, false>(a, b, kn, c0, out),
            (3, false) => rows_vnni::<3, false>(a, b, kn, c0, out),
            (_, false) => rows_vnni::<4, false>(a, b, kn, c0, out),
            (1, true) => rows_vnni::<1, true>(a, b, kn, c0, out),
            (2, true) => rows_vnni::<2, true>(a, b, kn, c0, out),
            (3, true) => rows_vnni::<3, true>(a, b, kn, c0, out),
            (_, true) => rows_vnni::<4, true>(a, b, kn, c0, out),
        }
    };
}

/// Per row: `[0]`, `[1]` columns 0..8 and 8..16 (even quads when split), `[2]`, `[3]` the
/// same for odd quads (only in one- and two-row passes).
type Acc<const R: usize> = [[__m256i; 4]; R];

/// The most rows of one pass over a 4-bit panel.
const PASS_NIBBLES: usize = 4;

/// The passes a tile of `rows` rows is run in over an 8-bit panel: as few as possible, none of
/// three or four rows when a split keeps more accumulators busy (8 = 6 + 2, 7 = 5 + 2); over a
/// 4-bit panel (`nibbles`), at most [`PASS_NIBBLES`] rows each.
#[inline(always)]
fn passes(rows: usize, nibbles: bool) -> &'static [usize] {
    if nibbles {
        return match rows {
            1 => &[1],
            2 => &[2],
            3 => &[3],
            4 => &[4],
            5 => &[3, 2],
            6 => &[4, 2],
            7 => &[4, 3],
            _ => &[4, 4],
        };
    }
    match rows {
        1 => &[1],
        2 => &[2],
        3 => &[3],
        4 => &[4],
        5 => &[5],
        6 => &[6],
        7 => &[5, 2],
        _ => &[6, 2],
    }
}

/// `R` rows (at `x`, `stride` apart) over `kq` quads of an 8-bit panel at `w`.
#[inline(always)]
unsafe fn quads<const R: usize>(
    w: *const u8,
    x: *const i8,
    stride: usize,
    kq: usize,
    acc: &mut Acc<R>,
) {
    let split = R <= 2;
    let mut t = 0;
    if split {
        while t + 2 <= kq {
            let b = w.add(64 * t);
            _mm_prefetch::<_MM_HINT_T0>(b.add(PF_DIST) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.add(PF_DIST + 64) as *const i8);
            let w00 = _mm256_loadu_si256(b as *const __m256i);
            let w01 = _mm256_loadu_si256(b.add(32) as *const __m256i);
            let w10 = _mm256_loadu_si256(b.add(64) as *const __m256i);
            let w11 = _mm256_loadu_si256(b.add(96) as *const __m256i);
            for r in 0..R {
                let x0 = bcast4(x.add(r * stride + 4 * t));
                let x1 = bcast4(x.add(r * stride + 4 * t + 4));
                acc[r][0] = dp(acc[r][0], w00, x0);
                acc[r][1] = dp(acc[r][1], w01, x0);
                acc[r][2] = dp(acc[r][2], w10, x1);
                acc[r][3] = dp(acc[r][3], w11, x1);
            }
            t += 2;
        }
    }
    while t < kq {
        let b = w.add(64 * t);
        let w0 = _mm256_loadu_si256(b as *const __m256i);
        let w1 = _mm256_loadu_si256(b.add(32) as *const __m256i);
        for r in 0..R {
            let x0 = bcast4(x.add(r * stride + 4 * t));
            acc[r][0] = dp(acc[r][0], w0, x0);
            acc[r][1] = dp(acc[r][1], w1, x0);
        }
        t += 1;
    }
}

/// As [`quads`] over a 4-bit panel: `kq` is even, one 64-byte block per two quads, its low
/// nibbles the first quad and its high nibbles the second (4-bit codes against int8 cannot
/// overflow `vpdpbusd`'s int32 lanes within a segment). The block's four weight vectors are
/// unpacked first, then each row broadcasts its two quads once for four `vpdpbusd`: at most
/// [`PASS_NIBBLES`] rows (8 accumulators, 4 weights, 2 broadcasts, the mask), as the same
/// broadcasts shared by two halves unpacked one at a time made LLVM spill.
#[inline(always)]
unsafe fn nibble_quads<const R: usize>(
    w: *const u8,
    x: *const i8,
    stride: usize,
    kq: usize,
    acc: &mut Acc<R>,
) {
    debug_assert!(R <= PASS_NIBBLES, "a 4-bit pass of {R} rows would spill");
    let split = R <= 2;
    let low = _mm256_set1_epi8(0x0f);
    for t in 0..kq / 2 {
        let b = w.add(64 * t);
        if split {
            _mm_prefetch::<_MM_HINT_T0>(b.add(PF_DIST) as *const i8);
        }
        let v0 = _mm256_loadu_si256(b as *const __m256i);
        let v1 = _mm256_loadu_si256(b.add(32) as *const __m256i);
        // [half][nibble]: columns 0..8 / 8..16, quad 2t / 2t + 1.
        let wv = [
            [
                _mm256_and_si256(v0, low),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v0), low),
            ],
            [
                _mm256_and_si256(v1, low),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v1), low),
            ],
        ];
        for r in 0..R {
            let x0 = bcast4(x.add(r * stride + 8 * t));
            let x1 = bcast4(x.add(r * stride + 8 * t + 4));
            for h in 0..2 {
                acc[r][h] = dp(acc[r][h], wv[h][0], x0);
                if split {
                    acc[r][2 + h] = dp(acc[r][2 + h], wv[h][1], x1);
                } else {
                    acc[r][h] = dp(acc[r][h], wv[h][1], x1);
                }
            }
        }
    }
}

#[inline(always)]
fn zero_acc<const R: usize>() -> Acc<R> {
    // SAFETY: `_mm256_setzero_si256` only needs AVX, which every caller has enabled.
    [[unsafe { _mm256_setzero_si256() }; 4]; R]
}

/// The two 8-column halves of a row's sum (the split accumulators added).
#[inline(always)]
unsafe fn halves<const R: usize>(acc: &Acc<R>, r: usize) -> [__m256i; 2] {
    if R <= 2 {
        [
            _mm256_add_epi32(acc[r][0], acc[r][2]),
            _mm256_add_epi32(acc[r][1], acc[r][3]),
        ]
    } else {
        [acc[r][0], acc[r][1]]
    }
}

/// One pass of `R` rows over a whole 8-bit panel, stored at `out` (row `r` at `r * ostride`).
#[inline(always)]
unsafe fn dot_pass<const R: usize>(
    panel: *const u8,
    x: *const i8,
    stride: usize,
    kq: usize,
    out: *mut i32,
    ostride: usize,
) {
    let mut acc = zero_acc::<R>();
    quads::<R>(panel, x, stride, kq, &mut acc);
    for r in 0..R {
        let [a0, a1] = halves(&acc, r);
        _mm256_storeu_si256(out.add(r * ostride) as *mut __m256i, a0);
        _mm256_storeu_si256(out.add(r * ostride + 8) as *mut __m256i, a1);
    }
}

/// `rows` rows over one 8-bit panel, in [`passes`].
#[inline(always)]
unsafe fn dot_rows(panel: *const u8, x: &Rows<i8>, rows: usize, out: *mut i32, ostride: usize) {
    let kq = x.kp / 4;
    let mut r0 = 0;
    for &n in passes(rows, false) {
        let xp = x.data.as_ptr().add(r0 * x.stride);
        let o = out.add(r0 * ostride);
        match n {
            1 => dot_pass::<1>(panel, xp, x.stride, kq, o, ostride),
            2 => dot_pass::<2>(panel, xp, x.stride, kq, o, ostride),
            3 => dot_pass::<3>(panel, xp, x.stride, kq, o, ostride),
            4 => dot_pass::<4>(panel, xp, x.stride, kq, o, ostride),
            5 => dot_pass::<5>(panel, xp, x.stride, kq, o, ostride),
            _ => dot_pass::<PASS>(panel, xp, x.stride, kq, o, ostride),
        }
        r0 += n;
    }
}

#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn dot_vnni(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) {
    dot_rows(panel.as_ptr(), x, x.rows, out.as_mut_ptr(), NR);
}

/// The wide tile: up to [`gemm::WIDE_ROWS`] (= [`PASS`]) rows, one pass per panel, so that
/// every pass of `matmul_int8`'s main loop runs with all 12 accumulators (its 8-row tiles
/// need a second, two-row pass).
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn dot_wide_vnni(panels: &[u8], x: &Rows<i8>, out: &mut TileWide) {
    const { assert!(gemm::WIDE_ROWS <= PASS) };
    let ps = x.kp * NR;
    for i in 0..WIDE_PANELS {
        let o = out.as_mut_ptr().add(i * NR);
        dot_rows(panels.as_ptr().add(i * ps), x, x.rows, o, WIDE_PANELS * NR);
    }
}

/// W8A8: the integer-mode tile over an 8-bit panel.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn linear_w8_vnni(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) {
    linear_rows::<false>(panel, x, xsum, out)
}

/// W4A8: the integer-mode tile over a 4-bit panel.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn linear_w4_vnni(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) {
    linear_rows::<true>(panel, x, xsum, out)
}

/// The integer-mode tile, segment by segment: each segment of the panel (at most 64 KiB, a
/// few KiB at the usual group sizes) stays in L1 while every pass of rows runs over it, and each
/// row's float accumulator lives in `out` between segments.
#[inline(always)]
unsafe fn linear_rows<const NIBBLES: bool>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    out: &mut TileF32,
) {
    out[..x.rows * NR].fill(0.0);
    let segs = panel.seg_len.len();
    let bpk = panel.bytes_per_k();
    // -(scale · z) == scale · (-z) exactly: rounding is symmetric in sign.
    let zero_all = panel.zero_all.map(|z| _mm256_set1_ps(-z));
    let (mut k0, mut b0) = (0usize, 0usize);
    for s in 0..segs {
        let len = *panel.seg_len.get_unchecked(s) as usize;
        let mut grid = [[_mm256_setzero_ps(); 2]; 2];
        for h in 0..2 {
            let scale = _mm256_loadu_ps(panel.scale.as_ptr().add(s * NR + 8 * h));
            let zscale = match zero_all {
                Some(neg_z) => _mm256_mul_ps(scale, neg_z),
                None => _mm256_loadu_ps(panel.zscale.as_ptr().add(s * NR + 8 * h)),
            };
            grid[h] = [scale, zscale];
        }
        let seg = Segment {
            w: panel.codes.as_ptr().add(b0),
            kq: len / 4,
            grid,
            s,
            segs,
        };
        let mut r0 = 0;
        for &n in passes(x.rows, NIBBLES) {
            let xp = x.data.as_ptr().add(r0 * x.stride + k0);
            let xs = xsum.as_ptr().add(r0 * segs);
            let o = out.as_mut_ptr().add(r0 * NR);
            match (n, NIBBLES) {
                (1, _) => segment_pass::<1, NIBBLES>(&seg, xp, x.stride, xs, o),
                (2, _) => segment_pass::<2, NIBBLES>(&seg, xp, x.stride, xs, o),
                (3, _) => segment_pass::<3, NIBBLES>(&seg, xp, x.stride, xs, o),
                (_, true) => segment_pass::<PASS_NIBBLES, true>(&seg, xp, x.stride, xs, o),
                (4, false) => segment_pass::<4, false>(&seg, xp, x.stride, xs, o),
                (5, false) => segment_pass::<5, false>(&seg, xp, x.stride, xs, o),
                _ => segment_pass::<PASS, false>(&seg, xp, x.stride, xs, o),
            }
            r0 += n;
        }
        k0 += len;
        b0 += len * bpk;
    }
}

/// One segment of a panel: its codes, quads of `k`, and `[half][scale, zscale]`.
struct Segment {
    w: *const u8,
    kq: usize,
    grid: [[__m256; 2]; 2],
    s: usize,
    segs: usize,
}

/// `R` rows (at `x`, `stride` apart; their `xsum` rows at `xs`) over one segment: the exact
/// `raw` sums, then each row's float accumulator (at `out`, `NR` apart) takes
/// `fma(scale, raw)` and `fma(zscale, xsum)`, in the order of `simd::gemm`.
#[inline(always)]
unsafe fn segment_pass<const R: usize, const NIBBLES: bool>(
    seg: &Segment,
    x: *const i8,
    stride: usize,
    xs: *const f32,
    out: *mut f32,
) {
    let mut acc = zero_acc::<R>();
    if NIBBLES {
        nibble_quads::<R>(seg.w, x, stride, seg.kq, &mut acc);
    } else {
        quads::<R>(seg.w, x, stride, seg.kq, &mut acc);
    }
    for r in 0..R {
        let xsum = _mm256_set1_ps(*xs.add(r * seg.segs + seg.s));
        let raw = halves(&acc, r);
        for h in 0..2 {
            let [scale, zscale] = seg.grid[h];
            let o = out.add(r * NR + 8 * h);
            let f = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(raw[h]), _mm256_loadu_ps(o));
            _mm256_storeu_ps(o, _mm256_fmadd_ps(zscale, xsum, f));
        }
    }
}

/// The quad of `rows` (0..=4) rows of `b` at `src` (`n` apart) in 32 columns (`cols` of them
/// inside the matrix, the rest read as zero), interleaved in registers: lane `L` of vector `q`
/// holds columns `16L + 4q .. + 4`, each as its 4 bytes; `b + 128` when `SIGNED` (zero rows
/// and columns too: they meet zero bytes of `a`).
#[inline(always)]
unsafe fn interleave_quad<const SIGNED: bool>(
    src: *const i8,
    n: usize,
    rows: usize,
    cols: usize,
) -> [__m256i; 4] {
    let mut v = [_mm256_setzero_si256(); 4];
    for (c, v) in v.iter_mut().enumerate().take(rows) {
        *v = if cols == 32 {
            _mm256_loadu_si256(src.add(c * n) as *const __m256i)
        } else {
            let mut buf = [0i8; 32];
            core::ptr::copy_nonoverlapping(src.add(c * n), buf.as_mut_ptr(), cols);
            _mm256_loadu_si256(buf.as_ptr() as *const __m256i)
        };
    }
    if SIGNED {
        for v in v.iter_mut() {
            *v = _mm256_xor_si256(*v, _mm256_set1_epi8(-128));
        }
    }
    let (t0, t1) = (
        _mm256_unpacklo_epi8(v[0], v[1]),
        _mm256_unpackhi_epi8(v[0], v[1]),
    );
    let (t2, t3) = (
        _mm256_unpacklo_epi8(v[2], v[3]),
        _mm256_unpackhi_epi8(v[2], v[3]),
    );
    [
        _mm256_unpacklo_epi16(t0, t2),
        _mm256_unpackhi_epi16(t0, t2),
        _mm256_unpacklo_epi16(t1, t3),
        _mm256_unpackhi_epi16(t1, t3),
    ]
}

/// Groups of 32 columns per call of [`rows_vnni`].
const GROUPS: usize = gemm::ROWS_COLS / 32;

/// `R` rows of `a` against up to [`gemm::ROWS_COLS`] columns of row-major `b`, read in place:
/// per two quads of `k`, each 32 columns of the eight rows of `b` are interleaved into quads in
/// registers and feed `vpdpbusd` with `a`'s quads broadcast; the accumulators, four per 32
/// columns and row, live in L1. Their lanes come out in the interleaved order and are put back
/// in column order once, at the end.
///
/// Unsigned `a` is the `u8` operand and `b` the `s8` one, exact as they are; signed `a` is the
/// `s8` operand against `b + 128`.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn rows_vnni<const R: usize, const SIGNED: bool>(
    a: &[u8],
    b: &[i8],
    (k, n): (usize, usize),
    c0: usize,
    out: &mut [i32],
) {
    let w = out.len() / R;
    let groups = w.div_ceil(32);
    let mut acc = [[_mm256_setzero_si256(); 4 * GROUPS]; R];
    let bp = b.as_ptr().add(c0);
    // Quads of `a` at `k0` (`len` values, fewer than 4 only at the end), one per row.
    let a_quads = |k0: usize, len: usize| {
        let mut aq = [0i32; R];
        for (r, q) in aq.iter_mut().enumerate() {
            *q = if len == 4 {
                read_unaligned(a.as_ptr().add(r * k + k0) as *const i32)
            } else if len == 0 {
                0
            } else {
                let mut bytes = [0u8; 4];
                bytes[..len].copy_from_slice(&a[r * k + k0..r * k + k0 + len]);
                i32::from_le_bytes(bytes)
            };
        }
        aq
    };
    let mut step = |k0: usize, len: usize| {
        let quads = len.div_ceil(4);
        let aq = [
            a_quads(k0, len.min(4)),
            a_quads(k0 + 4, len.saturating_sub(4).min(4)),
        ];
        for g in 0..groups {
            let cols = (w - 32 * g).min(32);
            let mut u = [[_mm256_setzero_si256(); 4]; 2];
            for (h, u) in u.iter_mut().enumerate().take(quads) {
                let rows = (len - 4 * h).min(4);
                *u = interleave_quad::<SIGNED>(bp.add((k0 + 4 * h) * n + 32 * g), n, rows, cols);
            }
            for r in 0..R {
                for q in 0..4 {
                    let mut s = acc[r][4 * g + q];
                    for h in 0..quads {
                        let x = _mm256_set1_epi32(aq[h][r]);
                        s = if SIGNED {
                            dp(s, u[h][q], x)
                        } else {
                            dp(s, x, u[h][q])
                        };
                    }
                    acc[r][4 * g + q] = s;
                }
            }
        }
    };
    let mut k0 = 0;
    while k0 + 8 <= k {
        step(k0, 8);
        k0 += 8;
    }
    while k0 < k {
        let len = (k - k0).min(4);
        step(k0, len);
        k0 += len;
    }
    // Lane L of acc[4g + q] holds columns 32g + 16L + 4q .. + 4: pairs of 128-bit lanes put
    // 32g + 8i .. + 8 in vector i.
    for r in 0..R {
        for g in 0..groups {
            let u = &acc[r][4 * g..4 * g + 4];
            let cols = [
                _mm256_permute2x128_si256::<0x20>(u[0], u[1]),
                _mm256_permute2x128_si256::<0x20>(u[2], u[3]),
                _mm256_permute2x128_si256::<0x31>(u[0], u[1]),
                _mm256_permute2x128_si256::<0x31>(u[2], u[3]),
            ];
            let mut buf = [0i32; 32];
            for (i, v) in cols.into_iter().enumerate() {
                _mm256_storeu_si256(buf.as_mut_ptr().add(8 * i) as *mut __m256i, v);
            }
            let left = (w - 32 * g).min(32);
            out[r * w + 32 * g..r * w + 32 * g + left].copy_from_slice(&buf[..left]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::gemm::{Rows, MAX_SEGMENT, MR, ROWS_COLS, ROWS_M, WIDE_ROWS};
    use crate::simd::scalar;

    /// splitmix64.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn skip() -> bool {
        if crate::simd::probe::has_avxvnni() {
            return false;
        }
        eprintln!("skipped: this CPU has no AVX-VNNI");
        true
    }

    /// Panel bytes and activations: random, or every panel byte 0 / 255 / alternating against
    /// every activation -128 (where a saturating or sign-tricked scheme would go wrong).
    fn data(rng: &mut Rng, kind: usize, panel_len: usize, x_len: usize) -> (Vec<u8>, Vec<i8>) {
        match kind {
            0 => (
                rng.bytes(panel_len),
                rng.bytes(x_len).into_iter().map(|v| v as i8).collect(),
            ),
            1 => (vec![255; panel_len], vec![-128; x_len]),
            2 => (vec![0; panel_len], vec![-128; x_len]),
            3 => (
                (0..panel_len)
                    .map(|i| if i % 3 == 0 { 0 } else { 255 })
                    .collect(),
                (0..x_len)
                    .map(|i| if i % 5 == 0 { 127 } else { -128 })
                    .collect(),
            ),
            _ => (
                rng.bytes(panel_len).into_iter().map(|v| v | 0x80).collect(),
                vec![-128; x_len],
            ),
        }
    }

    #[test]
    fn dot_tiles_match_scalar() {
        if skip() {
            return;
        }
        let mut rng = Rng(1);
        // The deepest tile matmul_int8 runs is KC = 1024 deep, but the contract has no limit:
        // 131072 is past the deepest int8 x int8 product (sums wrap in int32 on both sides).
        for kp in [8usize, 16, 24, 40, 136, 1024, 4104, 131_072] {
            for rows in 1..=MR {
                for kind in 0..5 {
                    if kp > 4104 && kind == 0 {
                        continue;
                    }
                    let stride = kp + 8 * (kind % 2);
                    let (panel, xd) = data(&mut rng, kind, kp * NR, rows * stride);
                    let xr = Rows::strided(&xd, rows, kp, stride);
                    let mut want = [0i32; MR * NR];
                    let mut got = [1i32; MR * NR];
                    scalar::dot_tile(&panel, &xr, &mut want);
                    dot_tile(&panel, &xr, &mut got);
                    assert_eq!(
                        want[..rows * NR],
                        got[..rows * NR],
                        "kp {kp} rows {rows} {kind}"
                    );
                    if rows <= WIDE_ROWS {
                        let (panels, _) = data(&mut rng, kind, WIDE_PANELS * kp * NR, 0);
                        let mut want = [0i32; gemm::WIDE_ROWS * WIDE_PANELS * NR];
                        let mut got = [1i32; gemm::WIDE_ROWS * WIDE_PANELS * NR];
                        scalar::dot_tile_wide(&panels, &xr, &mut want);
                        dot_tile_wide(&panels, &xr, &mut got);
                        let n = rows * WIDE_PANELS * NR;
                        assert_eq!(want[..n], got[..n], "wide: kp {kp} rows {rows} {kind}");
                    }
                }
            }
        }
    }

    #[test]
    fn linear_tiles_match_scalar() {
        if skip() {
            return;
        }
        let mut rng = Rng(2);
        for bits in [8u32, 4] {
            for kp in [
                16usize,
                32,
                48,
                128,
                264,
                1024,
                MAX_SEGMENT,
                MAX_SEGMENT + 64,
            ] {
                for rows in 1..=MR {
                    for kind in 0..5 {
                        if kp >= MAX_SEGMENT && kind == 0 {
                            continue;
                        }
                        // Segments of one length (the last one shorter), or one per 8..64 k.
                        let seg: usize = match kind % 3 {
                            0 => 32,
                            1 => kp.min(MAX_SEGMENT),
                            _ => 8 * (1 + rng.below(8)),
                        };
                        let mut seg_len = Vec::new();
                        let mut left = kp;
                        while left > 0 {
                            let l = seg.min(left);
                            seg_len.push(l as u32);
                            left -= l;
                        }
                        let segs = seg_len.len();
                        let stride = kp + 8 * (kind % 2);
                        let (codes, xd) =
                            data(&mut rng, kind, kp * NR * bits as usize / 8, rows * stride);
                        let xr = Rows::strided(&xd, rows, kp, stride);
                        let scale: Vec<f32> = (0..segs * NR)
                            .map(|_| 1.0 + rng.below(1000) as f32 / 997.0)
                            .collect();
                        let zmax = (1u32 << bits) - 1;
                        let shared = (kind % 2 == 0).then(|| rng.below(zmax as usize + 1) as f32);
                        let zero: Vec<f32> = (0..segs * NR)
                            .map(|_| shared.unwrap_or_else(|| rng.below(zmax as usize + 1) as f32))
                            .collect();
                        let zscale: Vec<f32> =
                            scale.iter().zip(&zero).map(|(s, z)| -s * z).collect();
                        let panel = Panel {
                            codes: &codes,
                            bits,
                            seg_len: &seg_len,
                            scale: &scale,
                            zero: &zero,
                            zscale: &zscale,
                            zero_all: shared,
                        };
                        let mut xsum = vec![0f32; rows * segs];
                        for m in 0..rows {
                            let mut k0 = 0;
                            for (s, &l) in seg_len.iter().enumerate() {
                                let l = l as usize;
                                let sum: i32 =
                                    xr.row(m)[k0..k0 + l].iter().map(|&v| v as i32).sum();
                                xsum[m * segs + s] = sum as f32;
                                k0 += l;
                            }
                        }
                        let mut want = [0f32; MR * NR];
                        let mut got = [1f32; MR * NR];
                        scalar::linear_tile(&panel, &xr, &xsum, &mut want);
                        linear_tile(&panel, &xr, &xsum, &mut got);
                        let n = rows * NR;
                        let wb: Vec<u32> = want[..n].iter().map(|v| v.to_bits()).collect();
                        let gb: Vec<u32> = got[..n].iter().map(|v| v.to_bits()).collect();
                        assert_eq!(
                            wb, gb,
                            "bits {bits} kp {kp} rows {rows} kind {kind} seg {seg}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_rows_match_scalar() {
        if skip() {
            return;
        }
        let mut rng = Rng(3);
        let deepest_signed = crate::kernels::matmul::max_depth(false);
        let deepest_unsigned = crate::kernels::matmul::max_depth(true);
        let shapes = [
            (1, 1),
            (3, 17),
            (5, 33),
            (8, 64),
            (13, 100),
            (64, 1030),
            (131, 70),
        ];
        for m in 1..=ROWS_M {
            for signed in [false, true] {
                let deepest = if signed {
                    deepest_signed
                } else {
                    deepest_unsigned
                };
                let cases = shapes.iter().map(|&(k, n)| (k, n, 0)).chain([
                    (deepest, 40, 1),
                    (deepest, 33, 2),
                    (deepest - 1, 9, 3),
                ]);
                for (k, n, kind) in cases {
                    let (a, b): (Vec<u8>, Vec<i8>) = match kind {
                        0 => (
                            rng.bytes(m * k),
                            rng.bytes(k * n).into_iter().map(|v| v as i8).collect(),
                        ),
                        // The extremes: |a| and |b| as large as they go, all of one sign.
                        1 => (
                            vec![if signed { 0x80 } else { 0xff }; m * k],
                            vec![-128; k * n],
                        ),
                        2 => (
                            vec![if signed { 0x80 } else { 0xff }; m * k],
                            vec![127; k * n],
                        ),
                        _ => (
                            (0..m * k)
                                .map(|i| if i % 2 == 0 { 0x80 } else { 0xff })
                                .collect(),
                            (0..k * n)
                                .map(|i| if i % 3 == 0 { 127 } else { -128 })
                                .collect(),
                        ),
                    };
                    let c0 = rng.below(n);
                    let w = (1 + rng.below(n - c0)).min(ROWS_COLS);
                    let mut want = vec![0i32; m * w];
                    let mut got = vec![7i32; m * w];
                    scalar::matmul_rows(&a, signed, m, &b, (k, n), c0, &mut want);
                    matmul_rows(&a, signed, m, &b, (k, n), c0, &mut got);
                    assert_eq!(want, got, "m {m} k {k} n {n} c0 {c0} w {w} signed {signed}");
                }
            }
        }
    }
}
