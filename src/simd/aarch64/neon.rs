//! PLACEHOLDER being replaced by the SIMD implementation.
use crate::simd::{scalar, Isa, Kernels};
pub const KERNELS: Kernels = Kernels { isa: Isa::Neon, ..scalar::KERNELS };
pub const KERNELS_DOTPROD: Kernels = Kernels { isa: Isa::NeonDotprod, ..KERNELS };
