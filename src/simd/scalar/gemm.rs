//! The scalar tile kernels of the integer matrix products: the definitions of `simd::gemm`
//! written out in plain Rust, the oracle of every other path's tiles.

use crate::simd::gemm::{
    self, check_dot, check_dot_wide, check_linear, check_rows, panel_code, Panel, Rows, TileF32,
    TileI32, TileWide, MR, NR, WIDE_PANELS,
};

pub fn dot_tile(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) {
    check_dot(panel, x);
    for m in 0..x.rows {
        let row = x.row(m);
        for j in 0..NR {
            let mut acc = 0i32;
            for (k, &xv) in row.iter().enumerate() {
                let p = panel[(k / 4) * 64 + 4 * j + (k % 4)];
                acc = acc.wrapping_add(p as i32 * xv as i32);
            }
            out[m * NR + j] = acc;
        }
    }
}

/// `dot_tile_wide` by way of [`dot_tile`], for the tests.
pub fn dot_tile_wide(panels: &[u8], x: &Rows<i8>, out: &mut TileWide) {
    check_dot_wide(panels, x);
    let mut tile: TileI32 = [0; MR * NR];
    for (i, panel) in panels.chunks_exact(x.kp * NR).enumerate() {
        dot_tile(panel, x, &mut tile);
        for m in 0..x.rows {
            let dst = &mut out[m * WIDE_PANELS * NR + i * NR..][..NR];
            dst.copy_from_slice(&tile[m * NR..(m + 1) * NR]);
        }
    }
}

pub fn linear_tile(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) {
    check_linear(panel, x, xsum);
    let segs = panel.seg_len.len();
    let bpk = panel.bytes_per_k();
    for m in 0..x.rows {
        let row = x.row(m);
        for j in 0..NR {
            let mut acc = 0f32;
            let (mut k0, mut b0) = (0usize, 0usize);
            for s in 0..segs {
                let len = panel.seg_len[s] as usize;
                let codes = &panel.codes[b0..b0 + len * bpk];
                let mut raw = 0i32;
                for k in 0..len {
                    let p = panel_code(codes, panel.bits, j, k);
                    raw += p as i32 * row[k0 + k] as i32;
                }
                acc = panel.scale[s * NR + j].mul_add(raw as f32, acc);
                acc = panel.zscale[s * NR + j].mul_add(xsum[m * segs + s], acc);
                k0 += len;
                b0 += len * bpk;
            }
            out[m * NR + j] = acc;
        }
    }
}

/// `matmul_rows` in plain Rust, for the tests.
pub fn matmul_rows(
    a: &[u8],
    signed: bool,
    m: usize,
    b: &[i8],
    (k, n): (usize, usize),
    c0: usize,
    out: &mut [i32],
) {
    let w = check_rows(a, m, b, (k, n), c0, out);
    for r in 0..m {
        for j in 0..w {
            let mut acc = 0i32;
            for kk in 0..k {
                let bv = b[kk * n + c0 + j];
                let (av, bv) = if signed {
                    (a[r * k + kk] as i8 as i32, (bv as u8 ^ 0x80) as i32)
                } else {
                    (a[r * k + kk] as i32, bv as i32)
                };
                acc = acc.wrapping_add(av * bv);
            }
            out[r * w + j] = acc;
        }
    }
}

/// The float-mode tile: [`gemm::linear_tile_f32_body`] compiled for the baseline.
pub fn linear_tile_f32(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    gemm::linear_tile_f32_body(panel, x, out)
}
