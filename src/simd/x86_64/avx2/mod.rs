//! The AVX2 path (with FMA and F16C): 256-bit vectors. `avxvnni` is this path with the integer
//! dot products on the VEX-encoded `vpdpbusd` (AVX-VNNI): a second table here, as it shares
//! everything but those tiles (`vnni.rs`) with `avx2`.

pub mod gemm;
pub mod gguf;
pub mod quant;
pub mod vnni;

use crate::simd::{Isa, Kernels};

pub const KERNELS: Kernels = Kernels {
    isa: Isa::Avx2,
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
    pack_panels: gemm::pack_i8_panels_avx2,
    dot_tile: gemm::dot_tile,
    dot_tile_wide: Some(gemm::dot_tile_wide),
    matmul_rows: Some(gemm::matmul_rows),
    linear_tile: gemm::linear_tile,
    linear_tile_f32: gemm::linear_tile_f32,
    gguf_quantize: Some(gguf::quantize_blocks),
    gguf_dot: Some(crate::simd::GgufDot {
        prepare: gguf::prepare_q8_0,
        dot: gguf::dot_q4_0_q8_0,
    }),
};

/// The AVX-VNNI path differs only in the integer dot products (`vpdpbusd` on ymm).
pub const KERNELS_AVXVNNI: Kernels = Kernels {
    isa: Isa::AvxVnni,
    dot_tile: vnni::dot_tile,
    dot_tile_wide: Some(vnni::dot_tile_wide),
    matmul_rows: Some(vnni::matmul_rows),
    linear_tile: vnni::linear_tile,
    ..KERNELS
};
