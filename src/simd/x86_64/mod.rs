//! x86_64 paths: AVX2 (with FMA and F16C; plus AVX-VNNI for the integer dot products) and
//! AVX-512 (F/BW/VL/DQ, plus VNNI for the integer dot products). The CPU probes are in
//! `simd::probe`.

pub mod avx2;
pub mod avx512;
