//! Row quantizers: one tensor row at a time, with an optional importance matrix, as ggml's
//! `quantize_<type>(src, dst, nrows, n_per_row, quant_weights)` (`ggml-quants.c`, llama.cpp
//! 0.3.36) that `llama-quantize` runs.
//!
//! Without an importance matrix the K-quants and IQ4_NL run their reference searches
//! (`quantize_row_*_ref`); with one, the weighted `_impl` searches. The legacy types take the
//! importance matrix too (Q4_0 / Q5_0 / Q4_1 / Q5_1); Q8_0 ignores it, as ggml does. An
//! importance matrix holds one weight per column of the row (`n_per_row` values).
//!
//! The quantizers themselves live in `kq_affine` (the types with a min: Q2_K, Q4_K, Q5_K and
//! the weighted Q4_1 / Q5_1) and `kq_sym` (Q3_K, Q6_K, IQ4_NL and the weighted Q4_0 / Q5_0);
//! each lists the types it implements in `DONE`.

use super::GgmlType::{self, *};
use super::{kq_affine, kq_sym, legacy};
use crate::error::{QfastError, Result};
use crate::parallel;

/// A row quantizer: `x` one row (a whole number of blocks), `out` its bytes, `imatrix` one
/// weight per value of the row (or none).
pub type RowQuantizer = fn(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>);

/// Runs a block quantizer over a row, block by block.
pub(crate) fn blockwise(q: fn(&[f32], &mut [u8]), bs: usize, ts: usize, x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(bs).zip(out.chunks_exact_mut(ts)) {
        q(xb, ob);
    }
}

fn q8_0_row(x: &[f32], out: &mut [u8], _imatrix: Option<&[f32]>) {
    blockwise(legacy::quantize_q8_0, 32, legacy::Q8_0_BYTES, x, out);
}

/// The row quantizer of `ty`, if qfast has one; `weighted`: an importance matrix is given.
pub fn row_quantizer(ty: GgmlType, weighted: bool) -> Option<RowQuantizer> {
    let done = |t: GgmlType| kq_affine::DONE.contains(&t) || kq_sym::DONE.contains(&t);
    let q: RowQuantizer = match (ty, weighted) {
        (Q8_0, _) => q8_0_row,
        (Q4_0, true) => kq_sym::quantize_row_q4_0_weighted,
        (Q5_0, true) => kq_sym::quantize_row_q5_0_weighted,
        (Q4_1, true) => kq_affine::quantize_row_q4_1_weighted,
        (Q5_1, true) => kq_affine::quantize_row_q5_1_weighted,
        (Q2_K, _) => kq_affine::quantize_row_q2_k,
        (Q4_K, _) => kq_affine::quantize_row_q4_k,
        (Q5_K, _) => kq_affine::quantize_row_q5_k,
        (Q3_K, _) => kq_sym::quantize_row_q3_k,
        (Q6_K, _) => kq_sym::quantize_row_q6_k,
        (IQ4_NL, _) => kq_sym::quantize_row_iq4_nl,
        _ => return None,
    };
    (ty == Q8_0 || done(ty)).then_some(q)
}

/// Quantizes `x`, whole rows of `n_per_row` values, into `out`, row by row (rows in
/// parallel), with the importance matrix `imatrix` (`n_per_row` weights) when given.
pub fn quantize_rows(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    let Some(q) = row_quantizer(ty, imatrix.is_some()) else {
        let with = if imatrix.is_some() {
            " with an importance matrix"
        } else {
            ""
        };
        return Err(QfastError::InvalidArgument(format!(
            "qfast.gguf cannot quantize to {}{with} yet",
            ty.name()
        )));
    };
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if n_per_row == 0 || !n_per_row.is_multiple_of(bs) || !x.len().is_multiple_of(n_per_row) {
        return Err(QfastError::InvalidArgument(format!(
            "{} rows hold whole blocks of {bs} values; got rows of {n_per_row} over {} values",
            ty.name(),
            x.len()
        )));
    }
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(QfastError::InvalidArgument(format!(
                "the importance matrix has {} weights; a row has {n_per_row} values",
                w.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(QfastError::InvalidArgument(format!(
                "importance matrix weight {i} is {}; weights are finite and >= 0",
                w[i]
            )));
        }
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(QfastError::NonFinite {
            index: vec![i],
            value: x[i],
        });
    }
    let row_bytes = n_per_row / bs * ts;
    assert_eq!(out.len(), x.len() / n_per_row * row_bytes);
    // A few hundred KiB of float32 per task.
    let rows_per_task = (65536 / n_per_row).max(1);
    let tasks: Vec<_> = x
        .chunks(rows_per_task * n_per_row)
        .zip(out.chunks_mut(rows_per_task * row_bytes))
        .collect();
    parallel::map(tasks, x.len(), |(x, out): (&[f32], &mut [u8])| {
        for (xr, or) in x
            .chunks_exact(n_per_row)
            .zip(out.chunks_exact_mut(row_bytes))
        {
            q(xr, or, imatrix);
        }
    })?;
    Ok(())
}
