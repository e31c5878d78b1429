//! `qfast.dequantize`: `scale * (q - zero_point)` per element, in float32, converted to the
//! requested output type at the end.

use super::layout::{split_mut, unpack_line, Scheme, Units, TASK_ELEMS};
use crate::error::{QfastError, Result};
use crate::parallel;
use crate::simd::{self, Kernels};
use half::{bf16, f16};

/// An output element type: float32, float16 or bfloat16 (rounded to nearest even).
pub trait OutElement: Copy + Default + Send + Sync + 'static {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
    /// `Some` when the output already is float32, so lines are written in place.
    fn as_f32_mut(_dst: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl OutElement for f32 {
    fn from_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn as_f32_mut(dst: &mut [f32]) -> Option<&mut [f32]> {
        Some(dst)
    }
}

impl OutElement for f16 {
    fn from_f32_slice(src: &[f32], dst: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

impl OutElement for bf16 {
    fn from_f32_slice(src: &[f32], dst: &mut [bf16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

/// A quantized tensor as stored: codes (`lines x line_bytes`, C order, each line a packed bit
/// stream, see [`super::layout::line_bytes`]) plus its grid.
#[derive(Clone, Copy, Debug)]
pub struct QuantizedRef<'a> {
    pub codes: &'a [u8],
    /// The logical shape.
    pub shape: &'a [usize],
    pub scheme: Scheme,
    pub scale: &'a [f32],
    /// Float zero points (integer codes converted exactly), or `None` for zero.
    pub zero_point: Option<&'a [f32]>,
    /// Per-group only: the group of each element along the last axis (GPTQ act_order).
    pub g_idx: Option<&'a [i32]>,
}

impl QuantizedRef<'_> {
    fn validate(&self, u: &Units) -> Result<()> {
        let expect = |what: &str, want: usize, got: usize| {
            if want == got {
                Ok(())
            } else {
                Err(QfastError::InvalidArgument(format!(
                    "{what} has {got} entries where shape {:?} with this granularity needs {want}",
                    self.shape
                )))
            }
        };
        expect(
            "data",
            u.lines * self.scheme.line_bytes(u.n),
            self.codes.len(),
        )?;
        if self.g_idx.is_none() {
            expect("scale", u.params(), self.scale.len())?;
        }
        if let Some(z) = self.zero_point {
            expect("zero_point", self.scale.len(), z.len())?;
        }
        if let Some(g) = self.g_idx {
            expect("g_idx", u.n, g.len())?;
            let groups = self.scale.len().checked_div(u.lines).unwrap_or(0);
            if groups * u.lines != self.scale.len() {
                return Err(QfastError::InvalidArgument(format!(
                    "scale has {} entries, not a multiple of the {} lines",
                    self.scale.len(),
                    u.lines
                )));
            }
            if let Some(bad) = g.iter().find(|&&j| j < 0 || j as usize >= groups.max(1)) {
                return Err(QfastError::InvalidArgument(format!(
                    "g_idx holds group {bad}, outside [0, {groups})"
                )));
            }
        }
        Ok(())
    }
}

/// Dequantizes into a new C-order buffer of the logical shape.
pub fn dequantize<O: OutElement>(q: &QuantizedRef) -> Result<Vec<O>> {
    let count = crate::alloc::checked_product(q.shape, "the output")?;
    let mut out = crate::alloc::try_vec(O::default(), count)?;
    dequantize_into(q, &mut out)?;
    Ok(out)
}

/// Dequantizes into `out`, C order, which holds exactly the logical shape's elements.
pub fn dequantize_into<O: OutElement>(q: &QuantizedRef, out: &mut [O]) -> Result<()> {
    q.scheme.validate(q.shape)?;
    let u = Units::new(q.shape, q.scheme.granularity);
    q.validate(&u)?;
    if out.len() != u.lines * u.n {
        return Err(QfastError::InvalidArgument(format!(
            "the output holds {} elements, shape {:?} needs {}",
            out.len(),
            q.shape,
            u.lines * u.n
        )));
    }
    let k = simd::active()?;
    let per_task = (TASK_ELEMS / u.n.max(1)).max(1);
    let tasks = u.lines.div_ceil(per_task);
    let items: Vec<_> = split_mut(out, per_task * u.n, tasks)
        .into_iter()
        .enumerate()
        .collect();
    let per_line = q.g_idx.is_some() || u.lanes;
    let results = parallel::map(items, u.lines * u.n, |(t, out)| -> Result<()> {
        let mut line = Line::new(u.n, per_line)?;
        for (i, dst) in split_mut(out, u.n, out.len() / u.n.max(1))
            .into_iter()
            .enumerate()
        {
            let l = t * per_task + i;
            match O::as_f32_mut(dst) {
                Some(dst) => line.dequantize(k, q, &u, l, dst),
                None => {
                    let mut values = std::mem::take(&mut line.values);
                    line.dequantize(k, q, &u, l, &mut values);
                    O::from_f32_slice(&values, dst);
                    line.values = values;
                }
            }
        }
        Ok(())
    })?;
    results.into_iter().collect()
}

/// Scratch for one line.
struct Line {
    codes: Vec<u8>,
    values: Vec<f32>,
    scale: Vec<f32>,
    zero_point: Vec<f32>,
}

impl Line {
    /// Scratch for lines of `n`; `per_line` reserves a scale and a zero point per element
    /// (`g_idx`, or per-channel on the last axis).
    fn new(n: usize, per_line: bool) -> Result<Line> {
        use crate::alloc::{try_vec, try_with_capacity};
        let m = if per_line { n } else { 0 };
        Ok(Line {
            codes: try_vec(0, n)?,
            values: try_vec(0.0, n)?,
            scale: try_with_capacity(m)?,
            zero_point: try_with_capacity(m)?,
        })
    }

    fn dequantize(&mut self, k: &Kernels, q: &QuantizedRef, u: &Units, l: usize, out: &mut [f32]) {
        let signed = q.scheme.signed;
        let lb = q.scheme.line_bytes(u.n);
        let packed = &q.codes[l * lb..(l + 1) * lb];
        unpack_line(k, q.scheme.bits, packed, signed, &mut self.codes);
        let zp = |i: usize| q.zero_point.map_or(0.0, |z| z[i]);
        if let Some(g_idx) = q.g_idx {
            let groups = q.scale.len() / u.lines;
            let row = l * groups;
            self.scale.clear();
            self.scale
                .extend(g_idx.iter().map(|&j| q.scale[row + j as usize]));
            self.zero_point.clear();
            self.zero_point
                .extend(g_idx.iter().map(|&j| zp(row + j as usize)));
            (k.dequantize_lanes)(&self.codes, signed, &self.scale, &self.zero_point, out);
        } else if u.lanes {
            if self.zero_point.len() != u.n {
                self.zero_point.clear();
                self.zero_point.extend((0..u.n).map(zp)); // reserved by `Line::new`
            }
            (k.dequantize_lanes)(&self.codes, signed, q.scale, &self.zero_point, out);
        } else if u.groups != 1 || u.group_size != u.n {
            for j in 0..u.groups {
                let seg = j * u.group_size..((j + 1) * u.group_size).min(u.n);
                let p = l * u.groups + j;
                (k.dequantize)(
                    &self.codes[seg.clone()],
                    signed,
                    q.scale[p],
                    zp(p),
                    &mut out[seg],
                );
            }
        } else {
            let c = u.channel_of(l);
            (k.dequantize)(&self.codes, signed, q.scale[c], zp(c), out);
        }
    }
}
