//! The AVX-512 paths (F, BW, DQ, VL): 512-bit vectors. `avx512vnni` is this path with the
//! integer dot products on `vpdpbusd`: a second table here rather than a folder of its own,
//! as it shares everything but those tiles (registers, masks, packing, the float tile) with
//! `avx512`, and only replaces entries of its table.

pub mod gemm;
pub mod gguf;
pub mod quant;

use crate::simd::x86_64::avx2;
use crate::simd::{GgufDot, Isa, Kernels};

pub const KERNELS: Kernels = Kernels {
    isa: Isa::Avx512,
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
    // Without VNNI, the integer products are AVX2's (`vpmaddubsw` is no wider win here).
    pack_panels: gemm::pack_i8_panels_avx512,
    dot_tile: avx2::gemm::dot_tile,
    dot_tile_wide: Some(avx2::gemm::dot_tile_wide),
    matmul_rows: Some(avx2::gemm::matmul_rows),
    linear_tile: avx2::gemm::linear_tile,
    linear_tile_f32: gemm::linear_tile_f32,
    gguf_quantize: Some(gguf::quantize_blocks),
    // Without VNNI, AVX2's `Q4_0 · Q8_0` (the same bits as `dot_ref`).
    gguf_dot: Some(GgufDot {
        prepare: avx2::gguf::prepare_q8_0,
        dot: avx2::gguf::dot_q4_0_q8_0,
    }),
};

/// The VNNI path differs only in the integer dot products (`vpdpbusd`).
pub const KERNELS_VNNI: Kernels = Kernels {
    isa: Isa::Avx512Vnni,
    pack_panels: gemm::pack_i8_panels_avx512,
    dot_tile: gemm::dot_tile,
    dot_tile_wide: Some(gemm::dot_tile_wide),
    matmul_rows: Some(gemm::matmul_rows),
    linear_tile: gemm::linear_tile,
    gguf_dot: Some(GgufDot {
        prepare: gguf::prepare_q8_0,
        dot: gguf::dot_q4_0_q8_0,
    }),
    ..KERNELS
};
