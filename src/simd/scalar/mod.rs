//! The scalar path: plain Rust, the oracle every SIMD path is tested against (bit-identical
//! codes and floats), and the tail handler of the SIMD kernels.

pub mod gemm;
pub mod quant;

pub use gemm::{dot_tile, dot_tile_wide, linear_tile, linear_tile_f32, matmul_rows};
pub use quant::*;

use crate::simd::{Isa, Kernels};

pub const KERNELS: Kernels = Kernels {
    isa: Isa::Scalar,
    minmax: quant::minmax,
    minmax_lanes: quant::minmax_lanes,
    quantize: quant::quantize,
    quantize_lanes: quant::quantize_lanes,
    minmax_groups: quant::minmax_groups,
    quantize_groups: quant::quantize_groups,
    dequantize: quant::dequantize,
    dequantize_lanes: quant::dequantize_lanes,
    pack4: quant::pack4,
    unpack4: quant::unpack4,
    pack2: quant::pack2,
    unpack2: quant::unpack2,
    pack_panels: crate::simd::gemm::pack_i8_panels,
    dot_tile: gemm::dot_tile,
    dot_tile_wide: None,
    matmul_rows: None,
    linear_tile: gemm::linear_tile,
    linear_tile_f32: gemm::linear_tile_f32,
    gguf_quantize: None,
    gguf_dot: None,
};
