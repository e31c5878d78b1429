//! Kernels over whole tensors: plain Rust over slices and strided views, no PyO3. They pick
//! the ISA table once per call and split large inputs across qfast's thread pool.

pub mod dequantize;
pub mod layout;
pub mod linear;
pub mod matmul;
pub mod params;
pub mod quantize;
mod shared;
pub mod source;

pub use dequantize::{dequantize, dequantize_into, OutElement, QuantizedRef};
pub use layout::{Granularity, Scheme};
pub use params::ScaleDtype;
pub use quantize::{
    codes_len, params_len, quantize, quantize_into, quantize_into_as, Quantized, StaticParams,
};
pub use source::{Element, Strided};
