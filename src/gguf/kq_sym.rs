//! ggml's quantizers of the symmetric types (`d * q`): Q3_K, Q6_K, IQ4_NL, and the
//! importance-weighted Q4_0 / Q5_0, bit-exact with llama.cpp 0.3.36's `ggml-quants.c`.
//! (Being written: the functions below are placeholders until listed in `DONE`.)

use super::GgmlType;

/// The types this module implements (`rows::row_quantizer` offers only these).
pub const DONE: &[GgmlType] = &[];

pub fn quantize_row_q3_k(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_q6_k(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_iq4_nl(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_q4_0_weighted(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_q5_0_weighted(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}
