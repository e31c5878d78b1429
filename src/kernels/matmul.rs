//! `qfast.matmul_int8`: exact int32 products of int8/uint8 `[M, K]` by int8 `[K, N]`.
//!
//! Both operands arrive as plain arrays on every call, so nothing is cached: each task packs
//! its own block of `b` columns into panels (see `simd::gemm`), then runs every tile of `a`
//! rows over them. The tile kernels compute `u8 × i8` sums, so the operands are shifted by
//! 128 on the way in and the shift is taken out exactly afterwards (all in wrapping int32,
//! exact because the true result fits):
//!
//! - `a` int8: panel `b + 128`, rows `a`: `raw = Σab + 128·Σa`.
//! - `a` uint8: panel `b + 128`, rows `a - 128`:
//!   `raw = Σab + 128·Σa - 128·Σb - 16384·K`.

use super::shared::SharedMut;
use crate::error::{QfastError, Result};
use crate::parallel;
use crate::simd::gemm::{
    self, Rows, TileI32, TileWide, K_ALIGN, MR, NR, ROWS_COLS, ROWS_M, WIDE_PANELS, WIDE_ROWS,
};
use crate::simd::{self, Kernels};

/// The left operand: `[M, K]` row-major.
#[derive(Clone, Copy, Debug)]
pub enum Lhs<'a> {
    I8(&'a [i8]),
    U8(&'a [u8]),
}

impl<'a> Lhs<'a> {
    fn len(&self) -> usize {
        match self {
            Lhs::I8(a) => a.len(),
            Lhs::U8(a) => a.len(),
        }
    }

    fn slice(&self, r: std::ops::Range<usize>) -> Lhs<'a> {
        match *self {
            Lhs::I8(a) => Lhs::I8(&a[r]),
            Lhs::U8(a) => Lhs::U8(&a[r]),
        }
    }
}

/// Multiply-adds per task of a batched product whose batches are too small to split their
/// own columns across the pool.
const BATCH_TASK_WORK: usize = 1 << 18;

/// Multiply-adds below which a batch is one plain loop: packing for the tile kernels costs
/// more than the product itself (20,000 2x2 batches: 3.7 ms through `matmul_int8`).
const SMALL_BATCH: usize = 512;

/// `out = a @ b` by the textbook loop, exact (within [`max_depth`] every partial sum fits).
fn small_product(a: Lhs, b: &[i8], m: usize, k: usize, n: usize, out: &mut [i32]) {
    out.fill(0);
    for r in 0..m {
        let o = &mut out[r * n..(r + 1) * n];
        for (c, brow) in b.chunks_exact(n.max(1)).take(k).enumerate() {
            let v = match a {
                Lhs::I8(a) => a[r * k + c] as i32,
                Lhs::U8(a) => a[r * k + c] as i32,
            };
            for (d, &w) in o.iter_mut().zip(brow) {
                *d += v * w as i32;
            }
        }
    }
}

/// Batched `out[i] = a[ia[i]] @ b[ib[i]]` for every batch `i`: `a` holds `[M, K]` matrices,
/// `b` `[K, N]` matrices, `out` `ia.len()` `[M, N]` results, all row-major and back to back
/// (`ia` / `ib` express NumPy's broadcasting of the batch axes without copying operands).
/// Small batches run in tasks of several batches on qfast's pool, large ones one after the
/// other, each split across the pool; every result is exact, whatever the thread count.
#[allow(clippy::too_many_arguments)]
pub fn matmul_int8_batched(
    a: Lhs,
    b: &[i8],
    ia: &[usize],
    ib: &[usize],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [i32],
) -> Result<()> {
    let (mk, kn, mn) = (m * k, k * n, m * n);
    let batches = ia.len();
    let count = |len: usize, per: usize| len.checked_div(per).unwrap_or(usize::MAX);
    let bad = |what: &str| Err(QfastError::InvalidArgument(what.to_string()));
    if ib.len() != batches || out.len() != batches * mn {
        return bad("matmul_int8: batch index arrays and output do not match");
    }
    if !a.len().is_multiple_of(mk.max(1)) || !b.len().is_multiple_of(kn.max(1)) {
        return bad("matmul_int8: operands are not whole [M, K] / [K, N] matrices");
    }
    let (na, nb) = (count(a.len(), mk), count(b.len(), kn));
    if ia.iter().any(|&i| i >= na) || ib.iter().any(|&i| i >= nb) {
        return bad("matmul_int8: a batch index is out of range");
    }
    let small = m * k * n <= SMALL_BATCH;
    let one = |i: usize, dst: &mut [i32]| {
        let (x, y) = (ia[i], ib[i]);
        let (lhs, rhs) = (a.slice(x * mk..(x + 1) * mk), &b[y * kn..(y + 1) * kn]);
        if small && k <= max_depth(matches!(a, Lhs::U8(_))) {
            small_product(lhs, rhs, m, k, n, dst);
            Ok(())
        } else {
            matmul_int8(lhs, rhs, m, k, n, dst)
        }
    };
    if batches == 0 {
        return Ok(());
    }
    if mn == 0 || k > max_depth(matches!(a, Lhs::U8(_))) {
        // Nothing to write, or too deep: the first batch's call says which.
        return one(0, &mut out[..mn]);
    }
    let work = mk.max(m) * n;
    if work >= parallel::PARALLEL_MIN_ELEMS {
        // Each product splits its own columns across the pool.
        for (i, dst) in out.chunks_exact_mut(mn).enumerate() {
            one(i, dst)?;
        }
        return Ok(());
    }
    let per_task = (BATCH_TASK_WORK / work.max(1)).max(1);
    let items: Vec<_> = out.chunks_mut(per_task * mn).enumerate().collect();
    let results = parallel::map(items, batches.saturating_mul(work), |(t, dst)| {
        for (j, d) in dst.chunks_exact_mut(mn).enumerate() {
            one(t * per_task + j, d)?;
        }
        Ok(())
    })?;
    results.into_iter().collect()
}

/// The largest depth whose worst case fits int32: `128·128·K` for int8 × int8,
/// `255·128·K` for uint8 × int8.
pub fn max_depth(lhs_unsigned: bool) -> usize {
    if lhs_unsigned {
        (i32::MAX as usize) / (255 * 128)
    } else {
        (i32::MAX as usize) / (128 * 128)
    }
}

/// Most panels per task: a task packs its columns one depth block at a time, reading
/// `PANELS_PER_TASK · NR` contiguous bytes of each row of `b` (1 KiB: enough for the hardware
/// prefetchers to stream the rows; 128 bytes a row left the packing bound by cache misses at
/// 4 GB/s), into `PANELS_PER_TASK · KC · NR` bytes (1 MiB) that stay in L2 while every row
/// tile runs over them.
const PANELS_PER_TASK: usize = 64;

/// `out[M, N] = a[M, K] @ b[K, N]`, exact, with int32 accumulation.
pub fn matmul_int8(a: Lhs, b: &[i8], m: usize, k: usize, n: usize, out: &mut [i32]) -> Result<()> {
    matmul_int8_with(simd::active, a, b, m, k, n, out)
}

/// [`matmul_int8`] on the path `kern()` returns (asked only when there is a product to run).
fn matmul_int8_with(
    kern: impl FnOnce() -> Result<&'static Kernels>,
    a: Lhs,
    b: &[i8],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [i32],
) -> Result<()> {
    assert!(a.len() == m * k && b.len() == k * n && out.len() == m * n);
    let unsigned = matches!(a, Lhs::U8(_));
    if k > max_depth(unsigned) {
        let kind = if unsigned {
            "uint8 x int8"
        } else {
            "int8 x int8"
        };
        return Err(QfastError::Overflow(format!(
            "K={k} is deeper than {}, the most whose worst case fits int32 for {kind}; \
             split K into chunks and add the int32 partial products as int64",
            max_depth(unsigned)
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0);
        return Ok(());
    }
    let kern = kern()?;
    if let (Some(rows_fn), true) = (kern.matmul_rows, m <= ROWS_M) {
        return small_m(rows_fn, a, b, m, k, n, out);
    }
    let kp = k.next_multiple_of(K_ALIGN);
    let xs = gemm::row_stride(kp);

    // Rows of `a`, shifted into i8 and padded, and their sums.
    let mut x = crate::alloc::try_vec(0i8, m * xs)?;
    let mut rowsum = crate::alloc::try_vec(0i32, m)?;
    for (r, (xr, s)) in x.chunks_exact_mut(xs).zip(rowsum.iter_mut()).enumerate() {
        *s = match a {
            Lhs::I8(a) => {
                let src = &a[r * k..(r + 1) * k];
                xr[..k].copy_from_slice(src);
                src.iter().map(|&v| v as i32).sum()
            }
            Lhs::U8(a) => {
                let src = &a[r * k..(r + 1) * k];
                for (d, &v) in xr.iter_mut().zip(src) {
                    *d = (v ^ 0x80) as i8;
                }
                src.iter().map(|&v| v as i32).sum()
            }
        };
    }
    // The constant part of each row's correction.
    // (In place: `rowsum` becomes the correction.)
    for s in rowsum.iter_mut() {
        let fix = s.wrapping_mul(-128);
        *s = if unsigned {
            fix.wrapping_add((k as i32).wrapping_mul(16384))
        } else {
            fix
        };
    }
    let row_fix = rowsum;

    let panels = n.div_ceil(NR);
    // At least two tasks per thread (when there are enough panels) to balance the load.
    let per_task = PANELS_PER_TASK.min(panels.div_ceil(2 * parallel::num_threads()).max(1));
    let tasks: Vec<usize> = (0..panels.div_ceil(per_task)).collect();
    let shared = SharedMut::new(out);
    let work = m * k * n;
    parallel::map(tasks, work, |t| {
        let p0 = t * per_task;
        let p1 = (p0 + per_task).min(panels);
        // SAFETY: tasks write disjoint column ranges `p0 * NR..p1 * NR` of `out`.
        unsafe {
            task(
                kern, &x, xs, &row_fix, b, m, k, n, kp, unsigned, p0, p1, &shared,
            )
        }
    })?;
    Ok(())
}

/// A few rows of `a` (GEMV-like): `b` is streamed in place by the path's `matmul_rows`, in
/// tasks of columns, with no packing (packing would cost more than the product itself).
fn small_m(
    rows_fn: gemm::MatmulRows,
    a: Lhs,
    b: &[i8],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [i32],
) -> Result<()> {
    let (bytes, signed): (&[u8], bool) = match a {
        // SAFETY: i8 and u8 have the same size and alignment; every byte is valid.
        Lhs::I8(a) => (
            unsafe { std::slice::from_raw_parts(a.as_ptr() as *const u8, a.len()) },
            true,
        ),
        Lhs::U8(a) => (a, false),
    };
    // Signed `a` comes back with 128·Σa added.
    let fix: Vec<i32> = (0..m)
        .map(|r| match a {
            Lhs::I8(a) => a[r * k..(r + 1) * k]
                .iter()
                .fold(0i32, |s, &v| s.wrapping_add(v as i32))
                .wrapping_mul(-128),
            Lhs::U8(_) => 0,
        })
        .collect();
    let tasks: Vec<usize> = (0..n.div_ceil(ROWS_COLS)).collect();
    let shared = SharedMut::new(out);
    parallel::map(tasks, m * k * n, |t| {
        let c0 = t * ROWS_COLS;
        let w = ROWS_COLS.min(n - c0);
        let mut part = vec![0i32; m * w];
        rows_fn(bytes, signed, m, b, (k, n), c0, &mut part);
        for r in 0..m {
            // SAFETY: tasks write disjoint column ranges `c0..c0 + w` of `out`.
            let dst = unsafe { shared.slice(r * n + c0, w) };
            for (d, &v) in dst.iter_mut().zip(&part[r * w..(r + 1) * w]) {
                *d = v.wrapping_add(fix[r]);
            }
        }
    })?;
    Ok(())
}

/// Computes columns `p0 * NR..p1 * NR` of `out`, one depth block at a time: packs the block's
/// panels, then runs every row tile over them, adding the partial sums into `out`.
///
/// # Safety
/// No other task may write columns `p0 * NR..p1 * NR` of `out` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    kern: &Kernels,
    x: &[i8],
    xs: usize,
    row_fix: &[i32],
    b: &[i8],
    m: usize,
    k: usize,
    n: usize,
    kp: usize,
    unsigned: bool,
    p0: usize,
    p1: usize,
    out: &SharedMut<i32>,
) {
    let np = p1 - p0;
    let mut fix = vec![0i32; np * NR];
    let mut ones = Vec::new();
    let mut tile: TileI32 = [0; MR * NR];
    let mut wtile: TileWide = [0; WIDE_ROWS * WIDE_PANELS * NR];
    // The wide tile reads WIDE_PANELS panels at once: a shallower block keeps them in L1.
    let kc_max = if kern.dot_tile_wide.is_some() {
        KC / 2
    } else {
        KC
    };
    SCRATCH.with_borrow_mut(|packed| {
        // Every block starts below `k` (blocks are multiples of 8 long and kp - k < 8).
        let mut kb = 0;
        while kb < kp {
            let kc = kc_max.min(kp - kb);
            let rows_b = kc.min(k - kb); // rows of `b` in this block; the rest is padding
            packed.resize(np * kc * NR, 0);
            (kern.pack_panels)(
                &b[kb * n..(kb + rows_b) * n],
                (rows_b, n),
                p0 * NR,
                np,
                kc,
                packed,
            );
            // Per-column corrections of this block (none for int8 `a`).
            for (i, f) in fix.chunks_exact_mut(NR).enumerate() {
                let cols = NR.min(n - (p0 + i) * NR);
                if unsigned {
                    // 128·Σb over this block, from the packed panel itself: Σ (b + 128) is
                    // the dot product with a row of ones, less 128 per row of `b`.
                    ones.clear();
                    ones.resize(kc, 0i8);
                    ones[..rows_b].fill(1);
                    let panel = &packed[i * kc * NR..(i + 1) * kc * NR];
                    (kern.dot_tile)(panel, &Rows::new(&ones, 1, kc), &mut tile);
                    let shift = (rows_b as i32).wrapping_mul(128);
                    for (d, &s) in f[..cols].iter_mut().zip(&tile[..NR]) {
                        *d = s.wrapping_sub(shift).wrapping_mul(128);
                    }
                }
            }
            // Column blocks: groups of WIDE_PANELS panels by the wide tile where the path has
            // one, then single panels. Each block runs every row tile of `a`.
            let mut i = 0;
            while i < np {
                let width = match kern.dot_tile_wide {
                    Some(_) if i + WIDE_PANELS <= np => WIDE_PANELS,
                    _ => 1,
                };
                let n0 = (p0 + i) * NR;
                let cols = (width * NR).min(n - n0);
                let f = &fix[i * NR..i * NR + cols];
                let block = &packed[i * kc * NR..(i + width) * kc * NR];
                let mr = if width == 1 { MR } else { WIDE_ROWS };
                let mut m0 = 0;
                while m0 < m {
                    let rows = mr.min(m - m0);
                    let xr = Rows::strided(&x[m0 * xs + kb..], rows, kc, xs);
                    let sums: &[i32] = match kern.dot_tile_wide {
                        Some(wide) if width > 1 => {
                            wide(block, &xr, &mut wtile);
                            &wtile
                        }
                        _ => {
                            (kern.dot_tile)(block, &xr, &mut tile);
                            &tile
                        }
                    };
                    let tile_cols = width * NR;
                    for r in 0..rows {
                        // SAFETY: row `m0 + r`, columns `n0..n0 + cols` belong to this task.
                        let dst = unsafe { out.slice((m0 + r) * n + n0, cols) };
                        let part = &sums[r * tile_cols..r * tile_cols + cols];
                        let first = (kb == 0).then(|| row_fix[m0 + r]);
                        add_partial(dst, part, f, first);
                    }
                    m0 += rows;
                }
                i += width;
            }
            kb += kc;
        }
    })
}

/// Adds a depth block's partial sums `part` and column corrections `fix` into `dst`; the first
/// block (`first`: its row correction) overwrites `dst` instead. All wrapping: exact as long
/// as the final result fits int32.
#[inline]
fn add_partial(dst: &mut [i32], part: &[i32], fix: &[i32], first: Option<i32>) {
    match first {
        Some(rf) => {
            for ((d, &v), &c) in dst.iter_mut().zip(part).zip(fix) {
                *d = v.wrapping_add(rf).wrapping_add(c);
            }
        }
        None => {
            for ((d, &v), &c) in dst.iter_mut().zip(part).zip(fix) {
                *d = d.wrapping_add(v).wrapping_add(c);
            }
        }
    }
}

thread_local! {
    /// Each pool thread's packed panels, reused across calls (fresh memory would cost a page
    /// fault per 4 KiB on every call).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Depth per block: 1024 x 16 bytes of a panel (16 KiB) stay in L1 next to a tile's rows
/// (8 KiB) while every row tile runs over the panel.
const KC: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[i64], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
        let mut out = vec![0i64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| a[r * k + i] * b[i * n + c] as i64).sum();
            }
        }
        out.into_iter().map(|v| v as i32).collect()
    }

    /// Small (plain loop) and large (tile kernels) batches, broadcast indices, uint8 and
    /// int8 left operands: every batch equals the int64 reference.
    #[test]
    fn batched_equals_reference() {
        for (m, k, n) in [(2, 2, 2), (1, 7, 3), (5, 300, 9), (9, 64, 70)] {
            let (na, nb) = (3, 2);
            let a: Vec<u8> = (0..na * m * k).map(|i| (i * 37 % 256) as u8).collect();
            let b: Vec<i8> = (0..nb * k * n)
                .map(|i| (i * 91 % 256) as u8 as i8)
                .collect();
            let ia = [0, 1, 2, 0, 1, 2];
            let ib = [0, 0, 0, 1, 1, 1];
            for signed in [false, true] {
                let lhs = if signed {
                    // SAFETY: u8 and i8 have the same layout.
                    Lhs::I8(unsafe { std::slice::from_raw_parts(a.as_ptr() as *const i8, a.len()) })
                } else {
                    Lhs::U8(&a)
                };
                let mut out = vec![0i32; ia.len() * m * n];
                matmul_int8_batched(lhs, &b, &ia, &ib, m, k, n, &mut out).unwrap();
                for (i, got) in out.chunks_exact(m * n).enumerate() {
                    let av: Vec<i64> = a[ia[i] * m * k..(ia[i] + 1) * m * k]
                        .iter()
                        .map(|&v| if signed { v as i8 as i64 } else { v as i64 })
                        .collect();
                    let want = reference(&av, &b[ib[i] * k * n..(ib[i] + 1) * k * n], m, k, n);
                    assert_eq!(got, &want[..], "{m}x{k}x{n} batch {i} signed {signed}");
                }
            }
        }
        let mut out = vec![0i32; 4];
        let a = [0i8; 4];
        assert!(matmul_int8_batched(Lhs::I8(&a), &[0; 4], &[1], &[0], 2, 2, 2, &mut out).is_err());
    }

    /// Every path this CPU can run, end to end at the deepest `K` allowed, with every operand at
    /// the end of its range (the worst case that must still fit int32): the small-M path, the
    /// wide tile, single panels and a partial panel, each against the exact product.
    #[test]
    fn deepest_extremes_on_every_path() {
        for isa in simd::available() {
            let kern = isa.kernels().unwrap();
            // Inside, `a` meets `b + 128`: -128 x 127 and unsigned 0 x 127 put -128 against
            // panel bytes of 255 all the way down.
            let cases = [
                (false, -128i32, -128i8),
                (false, -128, 127),
                (true, 255, -128),
                (true, 255, 127),
                (true, 0, 127),
            ];
            for (unsigned, av, bv) in cases {
                let k = max_depth(unsigned);
                // Tasks of at least WIDE_PANELS panels (up to 4 threads: more would only
                // cost memory), then a partial panel.
                let n = (2 * WIDE_PANELS * parallel::num_threads().min(4) + 1) * NR + 3;
                let b = vec![bv; k * n];
                // Small-M, then tiles of 5 rows and of 8 + 1 (the one-row tiles).
                for m in [1, 4, 5, 9] {
                    let (a8, au8) = (vec![av as i8; m * k], vec![av as u8; m * k]);
                    let lhs = if unsigned {
                        Lhs::U8(&au8)
                    } else {
                        Lhs::I8(&a8)
                    };
                    let mut out = vec![0i32; m * n];
                    matmul_int8_with(|| Ok(kern), lhs, &b, m, k, n, &mut out).unwrap();
                    let want = av as i64 * bv as i64 * k as i64;
                    assert!(i32::try_from(want).is_ok());
                    let bad = out.iter().position(|&v| v as i64 != want);
                    assert_eq!(
                        bad,
                        None,
                        "{isa:?}: m {m}, k {k}, {av} x {bv}: {:?}",
                        &out[..8]
                    );
                }
            }
            // Too deep by one: an error, not a wrong answer.
            let k = max_depth(false) + 1;
            let mut out = vec![0i32; 1];
            let (a, b) = (vec![0i8; k], vec![0i8; k]);
            assert!(matmul_int8_with(|| Ok(kern), Lhs::I8(&a), &b, 1, k, 1, &mut out).is_err());
        }
    }
}
