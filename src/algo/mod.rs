//! Weight-quantization algorithms that search for a grid (as opposed to `kernels`, which apply
//! a given or min/max grid).

pub mod hqq;
