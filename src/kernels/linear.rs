//! `qfast.linear`: `y = x @ W.T + bias` with `W` a quantized `[N, K]` weight, packed once.
//!
//! [`PackedLinear::new`] turns the weight's codes and grid into panels (see `simd::gemm`):
//! columns in group order (GPTQ's `g_idx` permutation is applied here, once), each group one
//! segment padded to a multiple of 8, codes shifted to unsigned. Each forward call then
//! prepares the activations in the same column order and runs the tile kernels over tasks of
//! panels, on qfast's thread pool:
//!
//! - integer mode: each row quantized on the fly to symmetric INT8 (the grid of
//!   `qfast.quantize(x, 8, axis=0)`), integer products per segment, `y = acc · scale_x + bias`;
//! - float mode: the float rows against weights dequantized on the fly, `y = acc + bias`.
//!
//! Results do not depend on the thread count: each output is computed by one tile kernel in a
//! fixed order, whatever task runs it.

use super::layout::{line_bytes, unpack_line};
use super::params;
use super::shared::SharedMut;
use crate::error::{QfastError, Result};
use crate::parallel;
use crate::simd;
use crate::simd::gemm::{self, Panel, Rows, TileF32, K_ALIGN, MAX_SEGMENT, MR, NR};

/// Which input columns form each group.
#[derive(Clone, Copy, Debug)]
pub enum GroupMap<'a> {
    /// Runs of `group_size` consecutive columns (the last may be shorter); per-channel
    /// weights are one group of `K`.
    Contiguous(usize),
    /// `g_idx[c]`: the group of column `c` (GPTQ act_order).
    Indexed(&'a [i32]),
}

/// A quantized weight as `qfast.QTensor` holds it.
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    /// `[n][line_bytes(k, bits)]`: each row's `k` codes packed as a little-endian bit stream
    /// (see [`super::layout::line_bytes`]; 8-bit one per byte), two's complement when `signed`.
    pub codes: &'a [u8],
    pub n: usize,
    pub k: usize,
    pub bits: u32,
    pub signed: bool,
    /// `[n][groups]` scales.
    pub scale: &'a [f32],
    /// `[n][groups]` zero points (in code space), `None` for zero.
    pub zero: Option<&'a [f32]>,
    pub groups: usize,
    pub map: GroupMap<'a>,
}

/// Arithmetic of `linear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// Activations quantized per row to INT8, integer products (W8A8, W4A8).
    Int8,
    /// Weight-only: float activations, weights dequantized on the fly (W8A16, W4A16).
    Float,
}

/// One segment: `len` packed columns (a multiple of [`K_ALIGN`]), the first `real` of them
/// the input columns `order[start..start + real]`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    start: usize,
    real: usize,
}

/// A weight packed for the tile kernels.
pub struct PackedLinear {
    n: usize,
    k: usize,
    kp: usize,
    /// 8 or 4: the panel layout.
    panel_bits: u32,
    /// Input column of each packed position, `None` when the columns keep their order.
    order: Option<Vec<u32>>,
    segments: Vec<Segment>,
    seg_len: Vec<u32>,
    /// Per panel: `kp * bytes_per_k` codes.
    codes: Vec<u8>,
    /// Per panel: `[segments][NR]` each.
    scale: Vec<f32>,
    zero: Vec<f32>,
    zscale: Vec<f32>,
    /// The zero point all of the weight's rows and groups share, if they do.
    zero_all: Option<f32>,
}

fn invalid(msg: String) -> QfastError {
    QfastError::InvalidArgument(msg)
}

impl PackedLinear {
    /// Packs `w`, unpacking one row at a time from its stored bit streams; errors name what is
    /// inconsistent (shapes, non-finite scales, group indices).
    pub fn new(w: &Weight) -> Result<PackedLinear> {
        let (n, k) = (w.n, w.k);
        crate::checks::check_bits(w.bits)?;
        let lb = line_bytes(k, w.bits);
        if n.checked_mul(lb) != Some(w.codes.len()) {
            return Err(invalid(format!(
                "weight codes hold {} bytes, expected {n} rows of {lb} ({k} {}-bit codes)",
                w.codes.len(),
                w.bits
            )));
        }
        if w.groups == 0 && n * k > 0 || w.scale.len() != n * w.groups {
            return Err(invalid(format!(
                "weight scales hold {} values, expected {n} x {} groups",
                w.scale.len(),
                w.groups
            )));
        }
        if let Some(z) = w.zero {
            if z.len() != w.scale.len() {
                return Err(invalid(
                    "zero points must have the shape of the scales".into(),
                ));
            }
            if let Some(i) = z.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "zero point {} at flat index {i} is not finite",
                    z[i]
                )));
            }
        }
        if let Some(i) = w.scale.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "scale {} at flat index {i} is not finite",
                w.scale[i]
            )));
        }
        // Every code of a b-bit field is in range: signed codes are shifted to unsigned.
        let offset: i32 = if w.signed { 1 << (w.bits - 1) } else { 0 };
        let kern = simd::active()?;

        // Column order and the columns of each group.
        let (order, runs) = group_runs(k, w.groups, w.map)?;
        let mut segments = Vec::new();
        let mut seg_group = Vec::new();
        for (g, &(start, count)) in runs.iter().enumerate() {
            let mut done = 0;
            while done < count {
                let real = (count - done).min(MAX_SEGMENT);
                segments.push(Segment {
                    start: start + done,
                    real,
                });
                seg_group.push(g);
                done += real;
            }
        }
        let seg_len: Vec<u32> = segments
            .iter()
            .map(|s| s.real.next_multiple_of(K_ALIGN) as u32)
            .collect();
        let kp: usize = seg_len.iter().map(|&l| l as usize).sum();
        let panel_bits = if w.bits <= 4 { 4 } else { 8 };
        let bpk = if panel_bits == 4 { NR / 2 } else { NR };
        let panels = n.div_ceil(NR);
        let segs = segments.len();

        let mut codes = crate::alloc::try_vec(0u8, panels * kp * bpk)?;
        let mut scale = crate::alloc::try_vec(0f32, panels * segs * NR)?;
        let mut zero = crate::alloc::try_vec(0f32, panels * segs * NR)?;
        let mut zscale = crate::alloc::try_vec(0f32, panels * segs * NR)?;
        let col = |i: usize| order.as_ref().map_or(i, |o| o[i] as usize);
        let mut src = vec![0u8; k];
        for row in 0..n {
            let (p, j) = (row / NR, row % NR);
            unpack_line(
                kern,
                w.bits,
                &w.codes[row * lb..(row + 1) * lb],
                w.signed,
                &mut src,
            );
            let panel = &mut codes[p * kp * bpk..(p + 1) * kp * bpk];
            let mut b0 = 0;
            for (s, seg) in segments.iter().enumerate() {
                let dst = &mut panel[b0..b0 + seg_len[s] as usize * bpk];
                for i in 0..seg.real {
                    let c = src[col(seg.start + i)];
                    let v = if w.signed {
                        (c as i8 as i32 + offset) as u8
                    } else {
                        c
                    };
                    if panel_bits == 4 {
                        let at = (i / 8) * 64 + 4 * j + (i % 4);
                        dst[at] |= if i % 8 < 4 { v } else { v << 4 };
                    } else {
                        dst[(i / 4) * 64 + 4 * j + (i % 4)] = v;
                    }
                }
                let g = seg_group[s];
                let at = (p * segs + s) * NR + j;
                let sc = w.scale[row * w.groups + g];
                let z = w.zero.map_or(0.0, |z| z[row * w.groups + g]) + offset as f32;
                scale[at] = sc;
                zero[at] = z;
                zscale[at] = -sc * z;
                b0 += seg_len[s] as usize * bpk;
            }
        }
        // The zero point every real row shares, if any (symmetric weights).
        let zero_all = (0..n)
            .flat_map(|row| (0..segs).map(move |s| ((row / NR) * segs + s) * NR + row % NR))
            .map(|at| zero[at])
            .try_fold(None, |common: Option<f32>, z| match common {
                Some(c) if c.to_bits() != z.to_bits() => Err(()),
                _ => Ok(Some(z)),
            })
            .ok()
            .flatten();
        Ok(PackedLinear {
            n,
            k,
            kp,
            zero_all,
            panel_bits,
            order,
            segments,
            seg_len,
            codes,
            scale,
            zero,
            zscale,
        })
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Bytes of the packed weight.
    pub fn nbytes(&self) -> usize {
        self.codes.len() + 4 * (self.scale.len() + self.zero.len() + self.zscale.len())
    }

    fn panel(&self, p: usize) -> Panel<'_> {
        let bpk = if self.panel_bits == 4 { NR / 2 } else { NR };
        let segs = self.segments.len();
        let grid = (p * segs * NR)..((p + 1) * segs * NR);
        Panel {
            codes: &self.codes[p * self.kp * bpk..(p + 1) * self.kp * bpk],
            bits: self.panel_bits,
            seg_len: &self.seg_len,
            scale: &self.scale[grid.clone()],
            zero: &self.zero[grid.clone()],
            zscale: &self.zscale[grid],
            zero_all: self.zero_all,
        }
    }

    /// Copies row `x` (length `k`) in packed column order into `dst` (length `kp`), zeros in
    /// the padding, via `f(segment, source, destination)` per segment.
    fn arrange<T: Copy + Default>(
        &self,
        x: &[f32],
        scratch: &mut Vec<f32>,
        dst: &mut [T],
        mut f: impl FnMut(usize, &[f32], &mut [T]),
    ) {
        let src: &[f32] = match &self.order {
            None => x,
            Some(order) => {
                scratch.clear();
                scratch.extend(order.iter().map(|&c| x[c as usize]));
                scratch
            }
        };
        let mut b0 = 0;
        for (s, seg) in self.segments.iter().enumerate() {
            let len = self.seg_len[s] as usize;
            let d = &mut dst[b0..b0 + len];
            f(s, &src[seg.start..seg.start + seg.real], &mut d[..seg.real]);
            d[seg.real..].fill(T::default());
            b0 += len;
        }
    }

    /// `out[m][n] = x[m] @ W.T (+ bias)`, `x` `[m][k]` float32. An output beyond float32's
    /// range (finite activations and weights whose products or sums overflow) is an error
    /// naming its `(row, column)`.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        compute: Compute,
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_unchecked(x, m, bias, compute, out)?;
        // One read of the output (N per row, against K x N multiply-adds per row) finds the
        // first overflowed value in row order, whatever the thread count.
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            let n = self.n.max(1);
            return Err(QfastError::Overflow(format!(
                "the output at index ({}, {}) overflows float32 ({}): that row of the \
                 activations times the weight exceeds float32's range (about 3.4e38); scale \
                 the activations down (e.g. divide x by a power of two and multiply the result \
                 back in float64)",
                i / n,
                i % n,
                out[i]
            )));
        }
        Ok(())
    }

    fn forward_unchecked(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        compute: Compute,
        out: &mut [f32],
    ) -> Result<()> {
        let (n, k) = (self.n, self.k);
        assert!(x.len() == m * k && out.len() == m * n);
        if let Some(b) = bias {
            if b.len() != n {
                return Err(invalid(format!(
                    "bias has {} values, expected {n}",
                    b.len()
                )));
            }
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let kern = simd::active()?;
        let work = m * k * n;
        let segs = self.segments.len();
        let mut scratch = Vec::new();
        // Row stride of the arranged activations (padded so a tile's rows do not share L1 sets).
        let xs = gemm::row_stride(self.kp);
        match compute {
            Compute::Int8 => {
                let mut xq = crate::alloc::try_vec(0u8, m * xs)?;
                let mut xsum = crate::alloc::try_vec(0f32, m * segs)?;
                let mut sx = crate::alloc::try_vec(0f32, m)?;
                for r in 0..m {
                    let row = &x[r * k..(r + 1) * k];
                    // One pass gives both the grid and the finiteness check.
                    let stats = (kern.minmax)(row);
                    if !stats.finite {
                        return Err(nonfinite(row, r));
                    }
                    let p = params::symmetric(stats, 8);
                    sx[r] = p.scale;
                    let sums = &mut xsum[r * segs..(r + 1) * segs];
                    let dst = &mut xq[r * xs..r * xs + self.kp];
                    self.arrange(row, &mut scratch, dst, |s, src, d| {
                        (kern.quantize)(src, &p, d);
                        sums[s] = d.iter().map(|&c| c as i8 as i32).sum::<i32>() as f32;
                    });
                }
                // SAFETY: u8 and i8 have the same size and alignment; every byte is valid.
                let xq: &[i8] =
                    unsafe { std::slice::from_raw_parts(xq.as_ptr() as *const i8, xq.len()) };
                self.run(
                    m,
                    work,
                    out,
                    |tile, p, m0, rows| {
                        let xr = Rows::strided(&xq[m0 * xs..], rows, self.kp, xs);
                        let xs = &xsum[m0 * segs..(m0 + rows) * segs];
                        (kern.linear_tile)(&self.panel(p), &xr, xs, tile);
                        for r in 0..rows {
                            for v in &mut tile[r * NR..(r + 1) * NR] {
                                *v *= sx[m0 + r];
                            }
                        }
                    },
                    bias,
                )
            }
            Compute::Float => {
                for r in 0..m {
                    let row = &x[r * k..(r + 1) * k];
                    if !(kern.minmax)(row).finite {
                        return Err(nonfinite(row, r));
                    }
                }
                let mut xf = crate::alloc::try_vec(0f32, m * xs)?;
                for r in 0..m {
                    let row = &x[r * k..(r + 1) * k];
                    let dst = &mut xf[r * xs..r * xs + self.kp];
                    self.arrange(row, &mut scratch, dst, |_, src, d| d.copy_from_slice(src));
                }
                self.run(
                    m,
                    work,
                    out,
                    |tile, p, m0, rows| {
                        let xr = Rows::strided(&xf[m0 * xs..], rows, self.kp, xs);
                        (kern.linear_tile_f32)(&self.panel(p), &xr, tile);
                    },
                    bias,
                )
            }
        }
    }

    /// Runs `tile_fn(tile, panel, m0, rows)` for every panel and tile of rows, in tasks of
    /// panels on the thread pool, and writes `tile + bias` into `out`.
    fn run(
        &self,
        m: usize,
        work: usize,
        out: &mut [f32],
        tile_fn: impl Fn(&mut TileF32, usize, usize, usize) + Sync,
        bias: Option<&[f32]>,
    ) -> Result<()> {
        let n = self.n;
        let panels = n.div_ceil(NR);
        let per_task = PANELS_PER_TASK.min(panels.div_ceil(2 * parallel::num_threads()).max(1));
        let tasks: Vec<usize> = (0..panels.div_ceil(per_task)).collect();
        let shared = SharedMut::new(out);
        parallel::map(tasks, work, |t| {
            let p0 = t * per_task;
            let p1 = (p0 + per_task).min(panels);
            let mut tile: TileF32 = [0.0; MR * NR];
            let mut mc0 = 0;
            while mc0 < m {
                let mc1 = (mc0 + MC).min(m);
                for p in p0..p1 {
                    let n0 = p * NR;
                    let cols = NR.min(n - n0);
                    let mut m0 = mc0;
                    while m0 < mc1 {
                        let rows = MR.min(mc1 - m0);
                        tile_fn(&mut tile, p, m0, rows);
                        for r in 0..rows {
                            // SAFETY: columns `p0 * NR..p1 * NR` belong to this task alone.
                            let dst = unsafe { shared.slice((m0 + r) * n + n0, cols) };
                            let src = &tile[r * NR..r * NR + cols];
                            match bias {
                                Some(b) => {
                                    for ((d, &v), &bv) in dst.iter_mut().zip(src).zip(&b[n0..]) {
                                        *d = v + bv;
                                    }
                                }
                                None => dst.copy_from_slice(src),
                            }
                        }
                        m0 += rows;
                    }
                }
                mc0 = mc1;
            }
        })?;
        Ok(())
    }
}

/// Panels per task at most: 8 panels of a 4096-deep 4-bit weight are 256 KiB.
const PANELS_PER_TASK: usize = 8;
/// Rows per block: every panel of a task runs over a block of rows while the rows stay in L2
/// (64 rows of 4096 int8 codes are 256 KiB).
const MC: usize = 64;

/// `(start, count)`: a group's columns in the packed column order.
type Run = (usize, usize);

/// The column order (`None`: unchanged) and, per group, its [`Run`].
fn group_runs(k: usize, groups: usize, map: GroupMap) -> Result<(Option<Vec<u32>>, Vec<Run>)> {
    match map {
        GroupMap::Contiguous(size) => {
            if size == 0 || (k > 0 && k.div_ceil(size) != groups) {
                return Err(invalid(format!(
                    "group_size {size} over {k} columns does not give the {groups} groups of the scales"
                )));
            }
            let runs = (0..groups)
                .map(|g| (g * size, size.min(k - g * size)))
                .collect();
            Ok((None, runs))
        }
        GroupMap::Indexed(g_idx) => {
            if g_idx.len() != k {
                return Err(invalid(format!(
                    "g_idx has {} entries, expected {k}",
                    g_idx.len()
                )));
            }
            if let Some(c) = g_idx.iter().position(|&g| g < 0 || g as usize >= groups) {
                return Err(invalid(format!(
                    "g_idx[{c}] = {} is not a group index in 0..{groups}",
                    g_idx[c]
                )));
            }
            let mut order: Vec<u32> = crate::alloc::try_with_capacity(k)?;
            order.extend(0..k as u32);
            order.sort_by_key(|&c| g_idx[c as usize]);
            let mut runs = crate::alloc::try_vec((0usize, 0usize), groups)?;
            for (i, &c) in order.iter().enumerate().rev() {
                let g = g_idx[c as usize] as usize;
                runs[g] = (i, runs[g].1 + 1);
            }
            let identity = order.iter().enumerate().all(|(i, &c)| i == c as usize);
            Ok((if identity { None } else { Some(order) }, runs))
        }
    }
}

/// The first non-finite activation of row `r`, as an error naming its `(row, column)`.
fn nonfinite(row: &[f32], r: usize) -> QfastError {
    let c = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
    QfastError::NonFinite {
        index: vec![r, c],
        value: row[c],
    }
}
