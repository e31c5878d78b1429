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
