//! The CPU probes and the peak loops: what this CPU can run, asked once per call (the
//! standard library caches its CPUID / HWCAP reads, so each probe is a few relaxed loads), and
//! the register-only loops that measure the peak of a path's integer dot-product instruction.

use super::Isa;

#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

/// The instruction mix of a kernel's inner loop, which its peak loop repeats: each benchmark's
/// "% of peak" is against the loop of the mix that ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mix {
    /// 8-bit unsigned panel bytes × int8 activations, exact: `matmul_int8` and W8A8 `linear`.
    Int8,
    /// 4-bit panel codes × int8 activations: W4A8 `linear`.
    W4A8,
}

impl Mix {
    pub const ALL: [Mix; 2] = [Mix::Int8, Mix::W4A8];

    /// The name used by `qfast._qfast.peak_gmacs`.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Int8 => "int8",
            Mix::W4A8 => "w4a8",
        }
    }

    pub fn parse(name: &str) -> Option<Mix> {
        let name = name.trim().to_ascii_lowercase();
        Mix::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Runs `iters` rounds of path `isa`'s inner-loop instruction mix `mix` on independent register
/// accumulators and returns the multiply-adds done: the peak the tile kernels of that mix are
/// measured against. `None` for paths without such a loop (or a CPU that cannot run `isa`).
pub fn peak_loop(isa: Isa, mix: Mix, iters: u64) -> Option<u64> {
    match (isa, mix) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, Mix::Int8 | Mix::W4A8) => peak_vnni(iters),
        #[cfg(target_arch = "x86_64")]
        (Isa::AvxVnni, Mix::Int8) => peak_avxvnni(iters),
        #[cfg(target_arch = "x86_64")]
        (Isa::AvxVnni, Mix::W4A8) => peak_avxvnni_w4(iters),
        _ => {
            let _ = iters; // no register-only loop for this path and mix
            None
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use core::arch::x86_64::*;

    pub fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    pub fn has_avx512() -> bool {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
    }

    pub fn has_avx512vnni() -> bool {
        is_x86_feature_detected!("avx512vnni")
    }

    /// AVX-VNNI: the VEX-encoded `vpdpbusd` on xmm / ymm (Intel client parts from Alder Lake
    /// on, Sapphire Rapids, Zen 5).
    pub fn has_avxvnni() -> bool {
        has_avx2() && is_x86_feature_detected!("avxvnni")
    }

    pub fn features() -> Vec<&'static str> {
        let mut f = Vec::new();
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if is_x86_feature_detected!($name) {
                    f.push($name);
                }
            )*};
        }
        probe!(
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512dq",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16",
            "avxvnni"
        );
        f
    }

    /// `iters` rounds of 16 independent `vpdpbusd` (64 multiply-adds each); the result is kept
    /// alive so the loop is not optimised away. `None` without VNNI.
    pub fn peak_vnni(iters: u64) -> Option<u64> {
        if !(has_avx512() && has_avx512vnni()) {
            return None;
        }
        // SAFETY: the CPU has AVX-512 VNNI.
        let sink = unsafe { peak_vnni_loop(iters) };
        std::hint::black_box(sink);
        Some(iters * 16 * 64)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn peak_vnni_loop(iters: u64) -> i32 {
        let a = std::hint::black_box(_mm512_set1_epi8(3));
        let b = std::hint::black_box(_mm512_set1_epi8(-5));
        let mut acc = [_mm512_setzero_si512(); 16];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut sum = _mm512_setzero_si512();
        for v in acc {
            sum = _mm512_add_epi32(sum, v);
        }
        _mm512_reduce_add_epi32(sum)
    }

    /// `iters` rounds of 12 independent ymm `vpdpbusd` (32 multiply-adds each: 12
    /// accumulators, two operands and a spare fill the 16 ymm registers, as in the `avxvnni`
    /// tiles). `None` without AVX-VNNI.
    pub fn peak_avxvnni(iters: u64) -> Option<u64> {
        if !has_avxvnni() {
            return None;
        }
        // SAFETY: the CPU has AVX2 and AVX-VNNI.
        let sink = unsafe { peak_avxvnni_loop(iters) };
        std::hint::black_box(sink);
        Some(iters * 12 * 32)
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn peak_avxvnni_loop(iters: u64) -> i32 {
        let a = std::hint::black_box(_mm256_set1_epi8(3));
        let b = std::hint::black_box(_mm256_set1_epi8(-5));
        let mut acc = [_mm256_setzero_si256(); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_dpbusd_avx_epi32(*v, a, b);
            }
        }
        let mut sum = _mm256_setzero_si256();
        for v in acc {
            sum = _mm256_add_epi32(sum, v);
        }
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
        lanes.iter().fold(0, |s, &v| s.wrapping_add(v))
    }

    /// The W4A8 mix of the `avxvnni` tiles: per 64-byte block of 4-bit codes, two loads, the
    /// nibble unpack (`vpand`, `vpsrlw`, `vpand` per load) and 16 ymm `vpdpbusd` (four rows,
    /// 32 multiply-adds each) into 12 accumulators, the activations in registers. `None`
    /// without AVX-VNNI.
    pub fn peak_avxvnni_w4(iters: u64) -> Option<u64> {
        if !has_avxvnni() {
            return None;
        }
        // SAFETY: the CPU has AVX2 and AVX-VNNI.
        let sink = unsafe { peak_avxvnni_w4_loop(iters) };
        std::hint::black_box(sink);
        Some(iters * 16 * 32)
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn peak_avxvnni_w4_loop(iters: u64) -> i32 {
        let low = _mm256_set1_epi8(0x0f);
        // The codes come from memory, as in the tiles: 8 vectors in L1, in turn.
        let codes = std::hint::black_box([_mm256_set1_epi8(0x3c); 8]);
        let x = std::hint::black_box(_mm256_set1_epi8(-5));
        let mut acc = [_mm256_setzero_si256(); 12];
        for i in 0..iters {
            for h in 0..2 {
                let v = _mm256_loadu_si256(codes.as_ptr().add((2 * i as usize + h) % 8));
                let w = [
                    _mm256_and_si256(v, low),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), low),
                ];
                for j in 0..8 {
                    let a = &mut acc[(8 * h + j) % 12];
                    *a = _mm256_dpbusd_avx_epi32(*a, w[j % 2], x);
                }
            }
        }
        let mut sum = _mm256_setzero_si256();
        for v in acc {
            sum = _mm256_add_epi32(sum, v);
        }
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
        lanes.iter().fold(0, |s, &v| s.wrapping_add(v))
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    pub fn has_dotprod() -> bool {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }

    pub fn features() -> Vec<&'static str> {
        let mut f = vec!["neon"];
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            f.push("dotprod");
        }
        if std::arch::is_aarch64_feature_detected!("i8mm") {
            f.push("i8mm");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            f.push("fp16");
        }
        f
    }
}

/// No SIMD path on other architectures: only the scalar one.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn features() -> Vec<&'static str> {
    Vec::new()
}
