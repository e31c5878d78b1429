//! Weight-quantization algorithms: the parts of GPTQ, AWQ and HQQ that NumPy/BLAS cannot do
//! at the speed of the hardware (column loops, grid searches, iterations). `kernels` applies a
//! given or min/max grid; these search for one.

pub mod awq;
pub mod gptq;
pub mod hqq;

use crate::error::Result;

/// Which compilation of a module's loops runs, from the active ISA path (`QFAST_ISA`): the
/// same Rust code compiled for wider vectors. The arithmetic is identical on every path (LLVM
/// never contracts or reorders float operations), only the instruction selection differs.
/// aarch64 needs no variant: NEON is part of its baseline.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Path {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    pub(crate) fn active() -> Result<Path> {
        use crate::simd::Isa;
        let isa = crate::simd::active()?.isa;
        Ok(match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => Path::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Path::Avx2,
            _ => Path::Portable,
        })
    }
}

/// NumPy's float32 summation (`pairwise_sum_FLOAT`), operation for operation: runs of at most
/// 128 values summed in 8 lanes folded as `((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))`, then the
/// rest one by one; longer runs split in two at a multiple of 8. The order of a float32 sum
/// is arbitrary (torch's differs again), but sharing NumPy's lets the tests hold results to
/// NumPy transcriptions of the references bit for bit: HQQ's zero points (a different
/// rounding of one mean can flip a code next iteration) and GPTQ's MSE grid choice.
pub(crate) fn pairwise_sum(a: &[f32]) -> f32 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |r, &v| r + v)
    } else if n <= BLOCK {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        for block in a[8..full].chunks_exact(8) {
            for j in 0..8 {
                r[j] += block[j];
            }
        }
        let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        a[full..].iter().fold(res, |r, &v| r + v)
    } else {
        let split = tree_split(n);
        pairwise_sum(&a[..split]) + pairwise_sum(&a[split..])
    }
}

/// The split point of NumPy's pairwise recursion for `n > 128` values.
pub(crate) fn tree_split(n: usize) -> usize {
    let half = n / 2;
    half - half % 8
}
