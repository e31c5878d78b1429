//! Weight-quantization algorithms: the parts of GPTQ, AWQ and HQQ that NumPy/BLAS cannot do
//! at the speed of the hardware (column loops, grid searches, iterations). `kernels` applies a
//! given or min/max grid; these search for one.

pub mod gptq;
pub mod hqq;
