//! The contract of each kernel of [`Kernels`](super::Kernels), one function per kernel, named
//! after it and taking its arguments: what every path's safe wrapper checks (the same checks
//! on every path) before it enters `#[target_feature]` code, which reads and writes without
//! bounds checks. A call that breaks it panics, whatever the path. Each is inlined into the
//! wrappers, as the asserts it replaces were.

use super::gemm::{self, Panel, Rows, TileF32, TileI32, TileWide};
use super::{check_groups, MinMax, QParams};

#[inline(always)]
pub fn minmax(_x: &[f32]) {}

#[inline(always)]
pub fn minmax_lanes(x: &[f32], min: &[f32], max: &[f32]) {
    assert!(x.len() == min.len() && x.len() == max.len());
}

#[inline(always)]
pub fn quantize(x: &[f32], _p: &QParams, out: &[u8]) {
    assert_eq!(x.len(), out.len());
}

#[inline(always)]
pub fn quantize_lanes(
    x: &[f32],
    scale: &[f32],
    zero_point: &[i32],
    _qmin: i32,
    _qmax: i32,
    out: &[u8],
) {
    assert!(x.len() == out.len() && x.len() == scale.len() && x.len() == zero_point.len());
}

#[inline(always)]
pub fn minmax_groups(x: &[f32], group_size: usize, out: &[MinMax]) {
    check_groups(x.len(), group_size, out.len());
}

#[inline(always)]
pub fn quantize_groups(x: &[f32], group_size: usize, grid: &[QParams], out: &[u8]) {
    check_groups(x.len(), group_size, grid.len());
    assert_eq!(x.len(), out.len());
}

#[inline(always)]
pub fn dequantize(codes: &[u8], _signed: bool, _scale: f32, _zero_point: f32, out: &[f32]) {
    assert_eq!(codes.len(), out.len());
}

#[inline(always)]
pub fn dequantize_lanes(
    codes: &[u8],
    _signed: bool,
    scale: &[f32],
    zero_point: &[f32],
    out: &[f32],
) {
    assert!(
        codes.len() == out.len() && codes.len() == scale.len() && codes.len() == zero_point.len()
    );
}

#[inline(always)]
pub fn pack4(codes: &[u8], out: &[u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(2));
}

#[inline(always)]
pub fn unpack4(packed: &[u8], _signed: bool, out: &[u8]) {
    assert!(packed.len() >= out.len().div_ceil(2));
}

#[inline(always)]
pub fn pack2(codes: &[u8], out: &[u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(4));
}

#[inline(always)]
pub fn unpack2(packed: &[u8], _signed: bool, out: &[u8]) {
    assert!(packed.len() >= out.len().div_ceil(4));
}

#[inline(always)]
pub fn dot_tile(panel: &[u8], x: &Rows<i8>, _out: &TileI32) {
    gemm::check_dot(panel, x);
}

#[inline(always)]
pub fn dot_tile_wide(panels: &[u8], x: &Rows<i8>, _out: &TileWide) {
    gemm::check_dot_wide(panels, x);
}

#[inline(always)]
pub fn matmul_rows(
    a: &[u8],
    _signed: bool,
    m: usize,
    b: &[i8],
    kn: (usize, usize),
    c0: usize,
    out: &[i32],
) {
    gemm::check_rows(a, m, b, kn, c0, out);
}

#[inline(always)]
pub fn linear_tile(panel: &Panel, x: &Rows<i8>, xsum: &[f32], _out: &TileF32) {
    gemm::check_linear(panel, x, xsum);
}

#[inline(always)]
pub fn linear_tile_f32(panel: &Panel, x: &Rows<f32>, _out: &TileF32) {
    panel.check(x.kp);
    assert!(x.in_bounds());
}
