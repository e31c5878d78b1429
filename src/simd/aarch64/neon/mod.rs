//! The NEON paths: 128-bit vectors. `neon-dotprod` is this path with the integer tiles on
//! `sdot`: a second table here, as `avx512vnni` is in `x86_64/avx512/`.

pub mod gemm;
pub mod quant;

use crate::simd::{Isa, Kernels};

pub const KERNELS: Kernels = Kernels {
    isa: Isa::Neon,
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

pub const KERNELS_DOTPROD: Kernels = Kernels {
    isa: Isa::NeonDotprod,
    pack_panels: crate::simd::gemm::pack_i8_panels,
    dot_tile: gemm::dotprod::dot_tile,
    dot_tile_wide: None,
    matmul_rows: None,
    linear_tile: gemm::dotprod::linear_tile,
    ..KERNELS
};
