//! PLACEHOLDER being replaced by the SIMD implementation.
use crate::simd::{scalar, Isa, Kernels};
pub const KERNELS: Kernels = Kernels { isa: Isa::Avx512, ..scalar::KERNELS };
pub const KERNELS_VNNI: Kernels = Kernels { isa: Isa::Avx512Vnni, ..KERNELS };
