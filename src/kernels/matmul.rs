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
use crate::simd::gemm::{self, Rows, TileI32, K_ALIGN, MR, NR};
use crate::simd::{self, Kernels};

/// The left operand: `[M, K]` row-major.
#[derive(Clone, Copy, Debug)]
pub enum Lhs<'a> {
    I8(&'a [i8]),
    U8(&'a [u8]),
}

impl Lhs<'_> {
    fn len(&self) -> usize {
        match self {
            Lhs::I8(a) => a.len(),
            Lhs::U8(a) => a.len(),
        }
    }
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

/// Panels per task: 8 panels (128 columns) of a 4096-deep `b` are 512 KiB, which stay in L2
/// while every tile of `a` runs over them.
const PANELS_PER_TASK: usize = 8;

/// `out[M, N] = a[M, K] @ b[K, N]`, exact, with int32 accumulation.
pub fn matmul_int8(a: Lhs, b: &[i8], m: usize, k: usize, n: usize, out: &mut [i32]) -> Result<()> {
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
    let kern = simd::active()?;
    let kp = k.next_multiple_of(K_ALIGN);

    // Rows of `a`, shifted into i8 and padded, and their sums.
    let mut x = vec![0i8; m * kp];
    let mut rowsum = vec![0i32; m];
    for (r, (xr, s)) in x.chunks_exact_mut(kp).zip(rowsum.iter_mut()).enumerate() {
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
    let row_fix: Vec<i32> = rowsum
        .iter()
        .map(|&s| {
            let fix = s.wrapping_mul(-128);
            if unsigned {
                fix.wrapping_add((k as i32).wrapping_mul(16384))
            } else {
                fix
            }
        })
        .collect();

    let panels = n.div_ceil(NR);
    let tasks: Vec<usize> = (0..panels.div_ceil(PANELS_PER_TASK)).collect();
    let shared = SharedMut::new(out);
    let work = m * k * n;
    parallel::map(tasks, work, |t| {
        let p0 = t * PANELS_PER_TASK;
        let p1 = (p0 + PANELS_PER_TASK).min(panels);
        // SAFETY: tasks write disjoint column ranges `p0 * NR..p1 * NR` of `out`.
        unsafe {
            task(
                kern, &x, &row_fix, b, m, k, n, kp, unsigned, p0, p1, &shared,
            )
        }
    })?;
    Ok(())
}

/// Packs panels `p0..p1` and runs every row tile over them.
///
/// # Safety
/// No other task may write columns `p0 * NR..p1 * NR` of `out` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    kern: &Kernels,
    x: &[i8],
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
    SCRATCH.with_borrow_mut(|packed| {
        packed.resize(np * kp * NR, 0);
        gemm::pack_i8_panels(b, (k, n), p0 * NR, np, kp, packed, None);
        let mut col_fix = vec![0i32; np * NR];
        if unsigned {
            // 128·Σb per column, from the packed panel itself: Σ_k (b + 128) over the k < K
            // is the dot product with a row of ones, minus 128·K.
            let mut ones = vec![0i8; kp];
            ones[..k].fill(1);
            let ones = Rows::new(&ones, 1, kp);
            let mut tile: TileI32 = [0; MR * NR];
            for (i, panel) in packed.chunks_exact(kp * NR).enumerate() {
                (kern.dot_tile)(panel, &ones, &mut tile);
                for (f, &s) in col_fix[i * NR..(i + 1) * NR].iter_mut().zip(&tile[..NR]) {
                    *f = s
                        .wrapping_sub((k as i32).wrapping_mul(128))
                        .wrapping_mul(128);
                }
            }
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { run_tiles(kern, x, row_fix, &col_fix, packed, m, n, kp, p0, out) }
    })
}

thread_local! {
    /// Each pool thread's packed panels, reused across calls (fresh memory would cost a page
    /// fault per 4 KiB on every call).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs every row tile over the packed panels (starting at panel `p0`) and writes the
/// corrected sums into `out`.
///
/// # Safety
/// No other task may write the panels' columns of `out` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn run_tiles(
    kern: &Kernels,
    x: &[i8],
    row_fix: &[i32],
    col_fix: &[i32],
    packed: &[u8],
    m: usize,
    n: usize,
    kp: usize,
    p0: usize,
    out: &SharedMut<i32>,
) {
    let mut tile: TileI32 = [0; MR * NR];
    // Depth blocks: a block of a panel (KC x NR bytes) stays in L1 while every row tile runs
    // over it; the int32 partial sums go straight into `out` (exact: wrapping adds).
    let mut kb = 0;
    while kb < kp {
        let kc = KC.min(kp - kb);
        for (i, panel) in packed.chunks_exact(kp * NR).enumerate() {
            let block = &panel[kb * NR..(kb + kc) * NR];
            let n0 = (p0 + i) * NR;
            let cols = NR.min(n - n0);
            let fix = &col_fix[i * NR..i * NR + cols];
            let mut m0 = 0;
            while m0 < m {
                let rows = MR.min(m - m0);
                let xr = Rows::strided(&x[m0 * kp + kb..], rows, kc, kp);
                (kern.dot_tile)(block, &xr, &mut tile);
                for r in 0..rows {
                    // SAFETY: row `m0 + r`, columns `n0..n0 + cols` belong to this task.
                    let dst = unsafe { out.slice((m0 + r) * n + n0, cols) };
                    let part = &tile[r * NR..r * NR + cols];
                    if kb == 0 {
                        let rf = row_fix[m0 + r];
                        for ((d, &v), &f) in dst.iter_mut().zip(part).zip(fix) {
                            *d = v.wrapping_add(rf).wrapping_add(f);
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(part) {
                            *d = d.wrapping_add(v);
                        }
                    }
                }
                m0 += rows;
            }
        }
        kb += kc;
    }
}

/// Depth per block: 1024 x 16 bytes of a panel (16 KiB) in L1 next to the rows' 8 KiB.
const KC: usize = 1024;
