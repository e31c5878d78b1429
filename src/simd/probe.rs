//! The CPU probes and the peak loops: what this CPU can run, asked once per call (the
//! standard library caches its CPUID / HWCAP reads, so each probe is a few relaxed loads), and
//! the register-only loops that measure the peak of a path's integer dot-product instruction.

use super::Isa;

#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

/// Runs `iters` rounds of the path's integer dot-product instruction on independent register
/// accumulators and returns the multiply-adds done: the peak the tile kernels are measured
/// against. `None` for paths without such a loop.
pub fn peak_loop(isa: Isa, iters: u64) -> Option<u64> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => peak_vnni(iters),
        _ => {
            let _ = iters; // no register-only loop for this path
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
