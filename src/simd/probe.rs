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
        // AVX-512 without VNNI runs AVX2's integer tiles.
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, Mix::Int8) => peak_avx2_int8(iters),
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

    /// The exact 8-bit mix of the AVX2 tiles (`matmul_int8`, W8A8 `linear`): `iters` rounds of
    /// 8 independent `vpmaddwd` (16 multiply-adds each) each added into its own accumulator by
    /// `vpaddd`. `None` without AVX2.
    pub fn peak_avx2_int8(iters: u64) -> Option<u64> {
        if !has_avx2() {
            return None;
        }
        // SAFETY: the CPU has AVX2.
        unsafe { peak_avx2_madd_loop(iters) };
        Some(iters * 8 * 16)
    }

    /// The mix of saturating AVX2 kernels (ONNX Runtime's `MatMulInteger`): `iters` rounds of
    /// 8 independent `vpmaddubsw` + `vpmaddwd` (by ones) + `vpaddd`, 32 multiply-adds each. Not
    /// exact for 8-bit operands (`vpmaddubsw` saturates); measured for comparison only. `None`
    /// without AVX2.
    pub fn peak_avx2_maddubs(iters: u64) -> Option<u64> {
        if !has_avx2() {
            return None;
        }
        // SAFETY: the CPU has AVX2.
        unsafe { peak_avx2_maddubs_loop(iters) };
        Some(iters * 8 * 32)
    }

    /// Written in assembly so that the compiler can neither hoist the loop-invariant products
    /// nor change the mix.
    #[target_feature(enable = "avx2")]
    unsafe fn peak_avx2_madd_loop(iters: u64) {
        if iters == 0 {
            return;
        }
        core::arch::asm!(
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm2, ymm2, ymm2",
            "vpxor ymm3, ymm3, ymm3",
            "vpxor ymm4, ymm4, ymm4",
            "vpxor ymm5, ymm5, ymm5",
            "vpxor ymm6, ymm6, ymm6",
            "vpxor ymm7, ymm7, ymm7",
            "vpcmpeqw ymm14, ymm14, ymm14",
            "vpcmpeqw ymm15, ymm15, ymm15",
            "2:",
            "vpmaddwd ymm8, ymm14, ymm15",
            "vpaddd ymm0, ymm0, ymm8",
            "vpmaddwd ymm9, ymm14, ymm15",
            "vpaddd ymm1, ymm1, ymm9",
            "vpmaddwd ymm10, ymm14, ymm15",
            "vpaddd ymm2, ymm2, ymm10",
            "vpmaddwd ymm11, ymm14, ymm15",
            "vpaddd ymm3, ymm3, ymm11",
            "vpmaddwd ymm8, ymm14, ymm15",
            "vpaddd ymm4, ymm4, ymm8",
            "vpmaddwd ymm9, ymm14, ymm15",
            "vpaddd ymm5, ymm5, ymm9",
            "vpmaddwd ymm10, ymm14, ymm15",
            "vpaddd ymm6, ymm6, ymm10",
            "vpmaddwd ymm11, ymm14, ymm15",
            "vpaddd ymm7, ymm7, ymm11",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm14") _, out("ymm15") _,
            options(nostack, nomem),
        );
    }

    #[target_feature(enable = "avx2")]
    unsafe fn peak_avx2_maddubs_loop(iters: u64) {
        if iters == 0 {
            return;
        }
        core::arch::asm!(
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm2, ymm2, ymm2",
            "vpxor ymm3, ymm3, ymm3",
            "vpxor ymm4, ymm4, ymm4",
            "vpxor ymm5, ymm5, ymm5",
            "vpxor ymm6, ymm6, ymm6",
            "vpxor ymm7, ymm7, ymm7",
            "vpcmpeqw ymm13, ymm13, ymm13",
            "vpsrlw ymm13, ymm13, 15",
            "vpcmpeqw ymm14, ymm14, ymm14",
            "vpcmpeqw ymm15, ymm15, ymm15",
            "2:",
            "vpmaddubsw ymm8, ymm14, ymm15",
            "vpmaddwd ymm8, ymm8, ymm13",
            "vpaddd ymm0, ymm0, ymm8",
            "vpmaddubsw ymm9, ymm14, ymm15",
            "vpmaddwd ymm9, ymm9, ymm13",
            "vpaddd ymm1, ymm1, ymm9",
            "vpmaddubsw ymm10, ymm14, ymm15",
            "vpmaddwd ymm10, ymm10, ymm13",
            "vpaddd ymm2, ymm2, ymm10",
            "vpmaddubsw ymm11, ymm14, ymm15",
            "vpmaddwd ymm11, ymm11, ymm13",
            "vpaddd ymm3, ymm3, ymm11",
            "vpmaddubsw ymm8, ymm14, ymm15",
            "vpmaddwd ymm8, ymm8, ymm13",
            "vpaddd ymm4, ymm4, ymm8",
            "vpmaddubsw ymm9, ymm14, ymm15",
            "vpmaddwd ymm9, ymm9, ymm13",
            "vpaddd ymm5, ymm5, ymm9",
            "vpmaddubsw ymm10, ymm14, ymm15",
            "vpmaddwd ymm10, ymm10, ymm13",
            "vpaddd ymm6, ymm6, ymm10",
            "vpmaddubsw ymm11, ymm14, ymm15",
            "vpmaddwd ymm11, ymm11, ymm13",
            "vpaddd ymm7, ymm7, ymm11",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack, nomem),
        );
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
