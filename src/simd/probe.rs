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
        // The AVX-512 table without VNNI runs AVX2's integer tiles.
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, Mix::W4A8) => peak_w4a8_avx2(iters),
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

    /// The wrapping sum of every int32 lane of `acc`: what the ymm peak loops return, so that
    /// their accumulators stay live.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_lanes(acc: &[__m256i]) -> i32 {
        let mut lanes = [0i32; 8];
        let mut total = 0i32;
        for &v in acc {
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
            total = lanes.iter().fold(total, |s, &l| s.wrapping_add(l));
        }
        total
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
        sum_lanes(&acc)
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
        sum_lanes(&acc)
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

/// The W4A8 tile of AVX2 (`avx2/gemm.rs`, `w4_block` in passes of 4 rows): the register-only
/// loop of its inner-loop mix.
#[cfg(target_arch = "x86_64")]
mod w4a8_avx2 {
    use super::x86_64::has_avx2;
    use core::arch::x86_64::*;

    /// Multiply-adds per round: 4 blocks (8 `k`) x 4 rows x 8 columns.
    const MACS: u64 = 4 * 4 * 8 * 8;

    /// `iters` rounds of the W4A8 AVX2 tile's inner loop on registers: per block, one 32-byte
    /// vector (the tile loads it) split into its nibbles (`vpsrlw`, two `vpand`), then per row
    /// of 4 two `vpmaddubsw` and two `vpaddw` (the tile's broadcasts of the activations are
    /// loads); per 4 blocks one `vpmaddwd` and one `vpaddd` per row. `None` without AVX2.
    pub fn peak_w4a8_avx2(iters: u64) -> Option<u64> {
        if !has_avx2() {
            return None;
        }
        // SAFETY: the CPU has AVX2.
        let sink = unsafe { peak_w4a8_avx2_loop(iters) };
        std::hint::black_box(sink);
        Some(iters * MACS)
    }

    /// One round in assembly (so that the compiler neither spills nor reschedules it): four
    /// blocks, each a nibble split and, for each of 4 rows, two `vpmaddubsw` added into the
    /// row's int16 sum (zeroed first, as the tile starts each run); then each row's sum
    /// widened by `vpmaddwd` and added to its int32 sum. 16 ymm registers, as the tile.
    #[target_feature(enable = "avx2")]
    unsafe fn peak_w4a8_avx2_loop(iters: u64) -> i32 {
        let v = std::hint::black_box(_mm256_set1_epi8(0x5a));
        let x0 = std::hint::black_box(_mm256_set1_epi8(-3));
        let x1 = std::hint::black_box(_mm256_set1_epi8(7));
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut c = [_mm256_setzero_si256(); 4];
        for _ in 0..iters {
            // SAFETY: register-only AVX2 instructions (the CPU has AVX2); every register
            // written is an output or clobber.
            unsafe {
                core::arch::asm!(
                    "vpxor {a0:x}, {a0:x}, {a0:x}",
                    "vpxor {a1:x}, {a1:x}, {a1:x}",
                    "vpxor {a2:x}, {a2:x}, {a2:x}",
                    "vpxor {a3:x}, {a3:x}, {a3:x}",
                    ".rept 4",
                    "vpsrlw {w1}, {v}, 4",
                    "vpand {w0}, {v}, {low}",
                    "vpand {w1}, {w1}, {low}",
                    "vpmaddubsw {t}, {w0}, {x0}",
                    "vpaddw {a0}, {a0}, {t}",
                    "vpmaddubsw {t}, {w1}, {x1}",
                    "vpaddw {a0}, {a0}, {t}",
                    "vpmaddubsw {t}, {w0}, {x0}",
                    "vpaddw {a1}, {a1}, {t}",
                    "vpmaddubsw {t}, {w1}, {x1}",
                    "vpaddw {a1}, {a1}, {t}",
                    "vpmaddubsw {t}, {w0}, {x0}",
                    "vpaddw {a2}, {a2}, {t}",
                    "vpmaddubsw {t}, {w1}, {x1}",
                    "vpaddw {a2}, {a2}, {t}",
                    "vpmaddubsw {t}, {w0}, {x0}",
                    "vpaddw {a3}, {a3}, {t}",
                    "vpmaddubsw {t}, {w1}, {x1}",
                    "vpaddw {a3}, {a3}, {t}",
                    ".endr",
                    "vpmaddwd {t}, {a0}, {ones}",
                    "vpaddd {c0}, {c0}, {t}",
                    "vpmaddwd {t}, {a1}, {ones}",
                    "vpaddd {c1}, {c1}, {t}",
                    "vpmaddwd {t}, {a2}, {ones}",
                    "vpaddd {c2}, {c2}, {t}",
                    "vpmaddwd {t}, {a3}, {ones}",
                    "vpaddd {c3}, {c3}, {t}",
                    v = in(ymm_reg) v,
                    low = in(ymm_reg) low,
                    ones = in(ymm_reg) ones,
                    x0 = in(ymm_reg) x0,
                    x1 = in(ymm_reg) x1,
                    w0 = out(ymm_reg) _,
                    w1 = out(ymm_reg) _,
                    t = out(ymm_reg) _,
                    a0 = out(ymm_reg) _,
                    a1 = out(ymm_reg) _,
                    a2 = out(ymm_reg) _,
                    a3 = out(ymm_reg) _,
                    c0 = inout(ymm_reg) c[0],
                    c1 = inout(ymm_reg) c[1],
                    c2 = inout(ymm_reg) c[2],
                    c3 = inout(ymm_reg) c[3],
                    options(pure, nomem, nostack, preserves_flags),
                );
            }
        }
        super::x86_64::sum_lanes(&c)
    }
}

#[cfg(target_arch = "x86_64")]
use w4a8_avx2::peak_w4a8_avx2;

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
