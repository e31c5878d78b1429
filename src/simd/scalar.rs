//! The scalar path: the reference every SIMD path must match, and the tail handler they share.

use super::{Isa, Kernels, MinMax, QParams};

pub const KERNELS: Kernels = Kernels {
    isa: Isa::Scalar,
    minmax,
    minmax_lanes,
    quantize,
    quantize_lanes,
    minmax_groups,
    quantize_groups,
    dequantize,
    dequantize_lanes,
    pack4,
    unpack4,
    pack2,
    unpack2,
    pack_panels: super::gemm::pack_i8_panels,
    dot_tile: super::gemm::dot_tile_ref,
    dot_tile_wide: None,
    matmul_rows: None,
    linear_tile: super::gemm::linear_tile_ref,
    linear_tile_f32: super::gemm::linear_tile_f32_body,
};

/// Bits of `|x|` at or above this are ±Inf or NaN.
pub const NONFINITE_BITS: u32 = 0x7f80_0000;

#[inline]
pub fn is_finite_bits(x: f32) -> bool {
    (x.to_bits() & 0x7fff_ffff) < NONFINITE_BITS
}

pub fn minmax(x: &[f32]) -> MinMax {
    let mut acc = MinMax::EMPTY;
    let mut abs_bits = 0u32;
    for &v in x {
        acc.min = acc.min.min(v);
        acc.max = acc.max.max(v);
        abs_bits = abs_bits.max(v.to_bits() & 0x7fff_ffff);
    }
    acc.finite = abs_bits < NONFINITE_BITS;
    acc
}

pub fn minmax_lanes(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool {
    assert!(x.len() == min.len() && x.len() == max.len());
    let mut abs_bits = 0u32;
    for ((&v, lo), hi) in x.iter().zip(min.iter_mut()).zip(max.iter_mut()) {
        *lo = lo.min(v);
        *hi = hi.max(v);
        abs_bits = abs_bits.max(v.to_bits() & 0x7fff_ffff);
    }
    abs_bits < NONFINITE_BITS
}

/// One code. Clamping before rounding equals rounding before clamping because the bounds are
/// integers; it keeps the float-to-int conversion in range for any finite input.
#[inline(always)]
pub fn quantize_one(x: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> u8 {
    let lo = (qmin - zero_point) as f32;
    let hi = (qmax - zero_point) as f32;
    let v = (x / scale).max(lo).min(hi);
    (v.round_ties_even() as i32 + zero_point) as u8
}

pub fn quantize(x: &[f32], p: &QParams, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, p.scale, p.zero_point, p.qmin, p.qmax);
    }
}

pub fn quantize_lanes(
    x: &[f32],
    scale: &[f32],
    zero_point: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    assert!(x.len() == out.len() && x.len() == scale.len() && x.len() == zero_point.len());
    for i in 0..x.len() {
        out[i] = quantize_one(x[i], scale[i], zero_point[i], qmin, qmax);
    }
}

pub fn minmax_groups(x: &[f32], group_size: usize, out: &mut [MinMax]) {
    super::minmax_groups_with(minmax, x, group_size, out);
}

pub fn quantize_groups(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]) {
    super::quantize_groups_with(quantize, x, group_size, grid, out);
}

#[inline(always)]
pub fn code_value(c: u8, signed: bool) -> f32 {
    if signed {
        c as i8 as f32
    } else {
        c as f32
    }
}

pub fn dequantize(codes: &[u8], signed: bool, scale: f32, zero_point: f32, out: &mut [f32]) {
    assert_eq!(codes.len(), out.len());
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = (code_value(c, signed) - zero_point) * scale;
    }
}

pub fn dequantize_lanes(
    codes: &[u8],
    signed: bool,
    scale: &[f32],
    zero_point: &[f32],
    out: &mut [f32],
) {
    assert!(
        codes.len() == out.len() && codes.len() == scale.len() && codes.len() == zero_point.len()
    );
    for i in 0..codes.len() {
        out[i] = (code_value(codes[i], signed) - zero_point[i]) * scale[i];
    }
}

pub fn pack4(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(2));
    for (o, pair) in out.iter_mut().zip(codes.chunks(2)) {
        let hi = pair.get(1).copied().unwrap_or(0);
        *o = (pair[0] & 0x0f) | (hi << 4);
    }
}

pub fn unpack4(packed: &[u8], signed: bool, out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(2));
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = (packed[i / 2] >> (4 * (i & 1))) & 0x0f;
        *o = if signed {
            ((nibble << 4) as i8 >> 4) as u8
        } else {
            nibble
        };
    }
}

pub fn pack2(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(4));
    for (o, quad) in out.iter_mut().zip(codes.chunks(4)) {
        *o = quad
            .iter()
            .enumerate()
            .fold(0u8, |acc, (j, &c)| acc | ((c & 0x03) << (2 * j)));
    }
}

pub fn unpack2(packed: &[u8], signed: bool, out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(4));
    for (i, o) in out.iter_mut().enumerate() {
        let crumb = (packed[i / 4] >> (2 * (i & 3))) & 0x03;
        *o = if signed {
            ((crumb << 6) as i8 >> 6) as u8
        } else {
            crumb
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_ties_to_even_and_clamps() {
        let p = QParams {
            scale: 0.5,
            zero_point: 0,
            qmin: -8,
            qmax: 7,
        };
        let x = [0.25, 0.75, -0.25, -0.75, 100.0, -100.0, 3.5, -4.0];
        let mut out = [0u8; 8];
        quantize(&x, &p, &mut out);
        let got: Vec<i8> = out.iter().map(|&b| b as i8).collect();
        assert_eq!(got, [0, 2, 0, -2, 7, -8, 7, -8]);
    }

    #[test]
    fn pack_unpack_nibbles() {
        let codes = [1u8, 0xf, 0x7, 0x8, 0x3];
        let mut packed = [0u8; 3];
        pack4(&codes, &mut packed);
        assert_eq!(packed, [0xf1, 0x87, 0x03]);
        let mut back = [0u8; 5];
        unpack4(&packed, true, &mut back);
        assert_eq!(back.map(|b| b as i8), [1, -1, 7, -8, 3]);
        unpack4(&packed, false, &mut back);
        assert_eq!(back, [1, 15, 7, 8, 3]);
    }

    #[test]
    fn pack_unpack_crumbs() {
        let codes = [0u8, 1, 2, 3, 3];
        let mut packed = [0u8; 2];
        pack2(&codes, &mut packed);
        assert_eq!(packed, [0b11_10_01_00, 0b11]);
        let mut back = [0u8; 5];
        unpack2(&packed, true, &mut back);
        assert_eq!(back.map(|b| b as i8), [0, 1, -2, -1, -1]);
    }

    #[test]
    fn minmax_flags_nonfinite() {
        assert!(minmax(&[1.0, -2.0]).finite);
        assert!(!minmax(&[1.0, f32::NAN]).finite);
        assert!(!minmax(&[f32::NEG_INFINITY]).finite);
        let m = minmax(&[1.0, -2.0, 0.5]);
        assert_eq!((m.min, m.max), (-2.0, 1.0));
    }
}
