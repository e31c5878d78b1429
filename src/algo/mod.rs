//! Weight-quantization algorithms: the parts of GPTQ, AWQ and HQQ that NumPy/BLAS cannot do
//! at the speed of the hardware (column loops, grid searches, iterations).

pub mod gptq;
