//! aarch64 paths: NEON (always present on aarch64) and NEON with the dot-product extension.
//! The CPU probes are in `simd::probe`.

pub mod neon;
