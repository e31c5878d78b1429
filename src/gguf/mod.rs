//! GGUF (llama.cpp) tensor types: block quantization and dequantization, bit-exact with
//! ggml's reference code and gguf-py's `gguf.quants`.
//!
//! A tensor of a block type is a sequence of blocks along its rows (the last axis must be a
//! multiple of the block size); a flat run of whole rows is a flat run of blocks, so the
//! drivers here work on flat slices and the binding handles shapes.

pub mod dot;
pub mod ggml;
pub mod kq_affine;
pub mod kq_sym;
pub mod kquants;
pub mod legacy;
pub mod rows;

use crate::error::{QfastError, Result};
use crate::parallel;
use crate::simd::{GgufDot, GgufKind, GgufQuantize, Kernels, Q8Row};
use half::{bf16, f16};

/// The tensor types qfast reads (`dequantize`) and, for some, writes (`quantize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

use GgmlType::*;

/// Every type, in ggml's id order.
pub const TYPES: [GgmlType; 14] = [
    F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, BF16,
];

type QuantizeBlock = fn(&[f32], &mut [u8]);
type DequantizeBlock = fn(&[u8], &mut [f32]);

impl GgmlType {
    /// The GGUF name, as `gguf.GGMLQuantizationType` spells it.
    pub fn name(self) -> &'static str {
        match self {
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            IQ4_NL => "IQ4_NL",
            IQ4_XS => "IQ4_XS",
        }
    }

    /// ggml's numeric id (`enum ggml_type`, the value stored in GGUF files).
    pub fn id(self) -> u32 {
        match self {
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            IQ4_NL => 20,
            IQ4_XS => 23,
            BF16 => 30,
        }
    }

    pub fn from_name(name: &str) -> Result<GgmlType> {
        TYPES
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let known: Vec<&str> = TYPES.iter().map(|t| t.name()).collect();
                QfastError::InvalidArgument(format!(
                    "unknown or unsupported GGUF type {name:?}; qfast.gguf handles {}",
                    known.join(", ")
                ))
            })
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => kquants::QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            F16 | BF16 => 2,
            Q4_0 => legacy::Q4_0_BYTES,
            Q4_1 => legacy::Q4_1_BYTES,
            Q5_0 => legacy::Q5_0_BYTES,
            Q5_1 => legacy::Q5_1_BYTES,
            Q8_0 => legacy::Q8_0_BYTES,
            Q2_K => kquants::Q2_K_BYTES,
            Q3_K => kquants::Q3_K_BYTES,
            Q4_K => kquants::Q4_K_BYTES,
            Q5_K => kquants::Q5_K_BYTES,
            Q6_K => kquants::Q6_K_BYTES,
            IQ4_NL => kquants::IQ4_NL_BYTES,
            IQ4_XS => kquants::IQ4_XS_BYTES,
        }
    }

    fn quantizer(self) -> Option<QuantizeBlock> {
        Some(match self {
            F16 => |x, b| b.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
            BF16 => |x, b| b.copy_from_slice(&bf16_round(x[0]).to_le_bytes()),
            Q4_0 => legacy::quantize_q4_0,
            Q4_1 => legacy::quantize_q4_1,
            Q5_0 => legacy::quantize_q5_0,
            Q5_1 => legacy::quantize_q5_1,
            Q8_0 => legacy::quantize_q8_0,
            _ => return None,
        })
    }

    fn dequantizer(self) -> DequantizeBlock {
        match self {
            F16 => |b, x| x[0] = f16::from_le_bytes([b[0], b[1]]).to_f32(),
            BF16 => |b, x| x[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Q4_0 => legacy::dequantize_q4_0,
            Q4_1 => legacy::dequantize_q4_1,
            Q5_0 => legacy::dequantize_q5_0,
            Q5_1 => legacy::dequantize_q5_1,
            Q8_0 => legacy::dequantize_q8_0,
            Q2_K => kquants::dequantize_q2_k,
            Q3_K => kquants::dequantize_q3_k,
            Q4_K => kquants::dequantize_q4_k,
            Q5_K => kquants::dequantize_q5_k,
            Q6_K => kquants::dequantize_q6_k,
            IQ4_NL => kquants::dequantize_iq4_nl,
            IQ4_XS => kquants::dequantize_iq4_xs,
        }
    }

    /// Whether `quantize` writes this type.
    pub fn can_quantize(self) -> bool {
        self.quantizer().is_some()
    }
}

/// float32 to bfloat16 as ggml (`ggml_compute_fp32_to_bf16`) and gguf-py do: round to nearest
/// even, NaN made quiet (not `half`'s conversion, which keeps a NaN's payload differently).
fn bf16_round(x: f32) -> bf16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((n >> 16) | 64) as u16);
    }
    bf16::from_bits(((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16)
}

/// Blocks per parallel task (a few hundred KiB of float32).
const BLOCKS_PER_TASK: usize = 4096;

/// Quantizes `x` (a whole number of blocks; every value finite) into `out`
/// (`x.len() / block_size * type_size` bytes).
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    let Some(q) = ty.quantizer() else {
        return Err(QfastError::InvalidArgument(format!(
            "qfast.gguf cannot quantize to {} (it reads it: use dequantize); \
             quantize supports F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0",
            ty.name()
        )));
    };
    let (bs, ts) = (ty.block_size(), ty.type_size());
    check_blocks(ty, x.len())?;
    assert_eq!(out.len(), x.len() / bs * ts);
    let kern = crate::simd::active()?;
    let wide = kern.gguf_quantize.zip(simd_kind(ty));
    let check = ty != F16 && ty != BF16; // those two store NaN and Inf as they are
    let chunk = bs * BLOCKS_PER_TASK;
    let tasks: Vec<_> = x
        .chunks(chunk)
        .zip(out.chunks_mut(ts * BLOCKS_PER_TASK))
        .enumerate()
        .collect();
    let results = parallel::map(
        tasks,
        x.len(),
        |(t, (x, out)): (usize, (&[f32], &mut [u8]))| {
            let finite = match run_wide(wide, x, out) {
                Some(finite) => finite,
                None if check && !(kern.minmax)(x).finite => false,
                None => {
                    for (xb, ob) in x.chunks_exact(bs).zip(out.chunks_exact_mut(ts)) {
                        q(xb, ob);
                    }
                    true
                }
            };
            if check && !finite {
                let i = x
                    .iter()
                    .position(|v| !v.is_finite())
                    .expect("a non-finite value");
                return Err(QfastError::NonFinite {
                    index: vec![t * chunk + i],
                    value: x[i],
                });
            }
            Ok(())
        },
    )?;
    // The first error in the data's order, whatever order the tasks ran in.
    results.into_iter().collect()
}

/// The block type of `ty` that a path's `gguf_quantize` may write.
fn simd_kind(ty: GgmlType) -> Option<GgufKind> {
    Some(match ty {
        Q4_0 => GgufKind::Q4_0,
        Q4_1 => GgufKind::Q4_1,
        Q5_0 => GgufKind::Q5_0,
        Q5_1 => GgufKind::Q5_1,
        Q8_0 => GgufKind::Q8_0,
        _ => return None,
    })
}

/// Runs the path's SIMD quantizer when there is one (it reports whether every value was
/// finite); `None` if the caller must run the portable one.
fn run_wide(wide: Option<(GgufQuantize, GgufKind)>, x: &[f32], out: &mut [u8]) -> Option<bool> {
    wide.and_then(|(quantize, kind)| quantize(kind, x, out))
}

/// Dequantizes `blocks` (a whole number of blocks) into `out` (`block_size` values per block).
pub fn dequantize(ty: GgmlType, blocks: &[u8], out: &mut [f32]) -> Result<()> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !blocks.len().is_multiple_of(ts) {
        return Err(QfastError::InvalidArgument(format!(
            "{} data of {} bytes is not a whole number of {ts}-byte blocks (truncated or \
             not {} data?)",
            ty.name(),
            blocks.len(),
            ty.name()
        )));
    }
    assert_eq!(out.len(), blocks.len() / ts * bs);
    let work = out.len();
    let d = ty.dequantizer();
    let tasks: Vec<(&[u8], &mut [f32])> = blocks
        .chunks(ts * BLOCKS_PER_TASK)
        .zip(out.chunks_mut(bs * BLOCKS_PER_TASK))
        .collect();
    parallel::map(tasks, work, |(b, out)| {
        for (bb, ob) in b.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
            d(bb, ob);
        }
    })?;
    Ok(())
}

/// `Q4_0 · Q8_0` per row: `w` is `rows` rows of Q4_0 blocks, `x` one row of Q8_0 blocks of the
/// same length; `out[r]` receives row `r`'s dot product (the fixed order of [`dot`]).
pub fn dot_q4_0_q8_0(w: &[u8], x: &[u8], out: &mut [f32]) -> Result<()> {
    let rows = out.len();
    let nb = x.len() / legacy::Q8_0_BYTES;
    if !x.len().is_multiple_of(legacy::Q8_0_BYTES) || w.len() != rows * nb * legacy::Q4_0_BYTES {
        return Err(QfastError::InvalidArgument(format!(
            "Q4_0 rows of {} bytes do not match a Q8_0 vector of {} bytes ({} blocks each)",
            w.len().checked_div(rows).unwrap_or(0),
            x.len(),
            nb
        )));
    }
    let kern = crate::simd::active()?;
    let row_bytes = nb * legacy::Q4_0_BYTES;
    if row_bytes == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let rows_fn = RowDot::new(kern, x)?;
    let per_task = (1 << 16) / row_bytes + 1;
    let tasks: Vec<_> = w
        .chunks(per_task * row_bytes)
        .zip(out.chunks_mut(per_task))
        .collect();
    parallel::map(tasks, w.len() * 2, |(w, out): (&[u8], &mut [f32])| {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
            *o = rows_fn.dot(row);
        }
    })?;
    Ok(())
}

/// One row's `Q4_0 · Q8_0` on the active path, the Q8_0 row prepared once.
enum RowDot<'a> {
    Portable(&'a [u8]),
    Simd(GgufDot, Q8Row, &'a [u8]),
}

impl<'a> RowDot<'a> {
    fn new(kern: &Kernels, x: &'a [u8]) -> Result<RowDot<'a>> {
        Ok(match kern.gguf_dot {
            Some(simd) => RowDot::Simd(simd, (simd.prepare)(x)?, x),
            None => RowDot::Portable(x),
        })
    }

    fn dot(&self, row: &[u8]) -> f32 {
        match self {
            RowDot::Portable(x) => dot::dot_ref(row, x),
            RowDot::Simd(simd, y, x) => (simd.dot)(row, y).unwrap_or_else(|| dot::dot_ref(row, x)),
        }
    }
}

/// `n` values must be whole blocks.
pub fn check_blocks(ty: GgmlType, n: usize) -> Result<()> {
    let bs = ty.block_size();
    if n.is_multiple_of(bs) {
        Ok(())
    } else {
        Err(QfastError::InvalidArgument(format!(
            "{} stores blocks of {bs} values along the last axis; {n} values are not a whole \
             number of blocks (pad the rows to a multiple of {bs} or choose another type)",
            ty.name()
        )))
    }
}
