//! qfast: fast quantization kernels with runtime ISA dispatch, and (with the `python`
//! feature) their NumPy binding.

pub mod algo;
pub mod alloc;
pub mod checks;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod parallel;
pub mod simd;

#[cfg(feature = "python")]
mod py;

pub use error::{QfastError, Result};
