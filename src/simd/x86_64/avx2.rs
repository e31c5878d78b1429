//! PLACEHOLDER being replaced by the SIMD implementation.
use crate::simd::{scalar, Isa, Kernels};
pub const KERNELS: Kernels = Kernels { isa: Isa::Avx2, ..scalar::KERNELS };
