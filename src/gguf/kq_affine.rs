//! ggml's quantizers of the types with a min (`d * q - m`): Q2_K, Q4_K, Q5_K, and the
//! importance-weighted Q4_1 / Q5_1, bit-exact with llama.cpp 0.3.36's `ggml-quants.c`.
//! (Being written: the functions below are placeholders until listed in `DONE`.)

use super::GgmlType;

/// The types this module implements (`rows::row_quantizer` offers only these).
pub const DONE: &[GgmlType] = &[];

pub fn quantize_row_q2_k(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_q4_k(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_q5_k(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_q4_1_weighted(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}

pub fn quantize_row_q5_1_weighted(_x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    out.fill(0);
}
