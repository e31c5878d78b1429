//! Strided N-D float input read line by line (a line = the last axis at one index of the
//! leading axes), converted to float32 on the way. Contiguous float32 lines are borrowed, not
//! copied, so the common case reads the caller's memory directly.

use crate::error::{QfastError, Result};
use half::{bf16, f16};
use std::marker::PhantomData;

/// An input element type: float32, float64, float16 or bfloat16.
pub trait Element: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    fn to_f32(self) -> f32;
    /// Converts a contiguous run (the fast path for whole lines).
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
    /// The value as float64 when it is finite there (only float64 inputs can be finite yet
    /// overflow float32).
    fn as_finite_f64(self) -> Option<f64> {
        None
    }
    /// `Some` when the element already is float32, so lines can be borrowed.
    fn as_f32(_src: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Element for f32 {
    const NAME: &'static str = "float32";
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(src: &[f32]) -> Option<&[f32]> {
        Some(src)
    }
}

impl Element for f64 {
    const NAME: &'static str = "float64";
    fn to_f32(self) -> f32 {
        self as f32 // round to nearest even, as NumPy's astype(float32)
    }
    fn as_finite_f64(self) -> Option<f64> {
        self.is_finite().then_some(self)
    }
}

impl Element for f16 {
    const NAME: &'static str = "float16";
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst); // F16C where the CPU has it
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bfloat16";
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// A read-only strided view of `shape` elements of `T`, with strides counted in elements
/// (they may be negative or zero). A 0-d input is viewed as shape `[1]`.
pub struct Strided<'a, T> {
    ptr: *const T,
    shape: Vec<usize>,
    strides: Vec<isize>,
    /// The caller's array is 0-d (viewed as `[1]`).
    scalar: bool,
    _data: PhantomData<&'a [T]>,
}

// SAFETY: the view only reads through `ptr`, and `T: Sync`; the lifetime `'a` ties it to
// the borrowed data, which nobody mutates while the view lives (the constructor's contract).
unsafe impl<T: Sync> Send for Strided<'_, T> {}
// SAFETY: as above, shared reads only.
unsafe impl<T: Sync> Sync for Strided<'_, T> {}

impl<'a, T: Element> Strided<'a, T> {
    /// # Safety
    /// For every index within `shape`, `ptr + sum(index[k] * strides[k])` must point to a
    /// valid, aligned `T` that stays alive and unmodified for `'a`.
    pub unsafe fn from_raw(ptr: *const T, shape: &[usize], strides: &[isize]) -> Self {
        assert_eq!(shape.len(), strides.len());
        let scalar = shape.is_empty();
        let (shape, strides) = if shape.is_empty() {
            (vec![1], vec![1])
        } else {
            (shape.to_vec(), strides.to_vec())
        };
        Strided {
            ptr,
            shape,
            strides,
            scalar,
            _data: PhantomData,
        }
    }

    /// A C-contiguous view of `data` with the given `shape`.
    pub fn contiguous(data: &'a [T], shape: &[usize]) -> Result<Self> {
        let count: usize = shape.iter().product();
        if count != data.len() {
            return Err(QfastError::InvalidArgument(format!(
                "shape {shape:?} holds {count} elements, the data {}",
                data.len()
            )));
        }
        let mut strides = vec![1isize; shape.len()];
        for k in (0..shape.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * shape[k + 1] as isize;
        }
        // SAFETY: every index within `shape` maps inside `data` (C order, count checked).
        Ok(unsafe { Self::from_raw(data.as_ptr(), shape, &strides) })
    }

    /// The logical shape (at least 1-d).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Length of a line (the last axis).
    pub fn line_len(&self) -> usize {
        *self.shape.last().expect("at least 1-d")
    }

    /// Number of lines (the product of the leading axes).
    pub fn lines(&self) -> usize {
        self.shape[..self.shape.len() - 1].iter().product()
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The logical index of element `i` of line `line`.
    pub fn index_of(&self, line: usize, i: usize) -> Vec<usize> {
        if self.scalar {
            return Vec::new();
        }
        let mut index = vec![0; self.shape.len()];
        *index.last_mut().expect("at least 1-d") = i;
        let mut rest = line;
        for k in (0..self.shape.len() - 1).rev() {
            index[k] = rest % self.shape[k];
            rest /= self.shape[k];
        }
        index
    }

    fn line_ptr(&self, line: usize) -> *const T {
        let mut offset = 0isize;
        let mut rest = line;
        for k in (0..self.shape.len() - 1).rev() {
            offset += (rest % self.shape[k]) as isize * self.strides[k];
            rest /= self.shape[k];
        }
        // SAFETY: `line < self.lines()`, so the index is within `shape` (from_raw contract).
        unsafe { self.ptr.offset(offset) }
    }

    /// Line `line` as float32: borrowed when it is contiguous float32, else converted into
    /// `buf`.
    pub fn line<'s>(&'s self, line: usize, buf: &'s mut Vec<f32>) -> Result<&'s [f32]> {
        self.segment(line, 0, self.line_len(), buf)
    }

    /// Elements `start..start + len` of line `line` as float32, as [`Strided::line`]; an
    /// error only when `buf` cannot grow to `len` elements.
    pub fn segment<'s>(
        &'s self,
        line: usize,
        start: usize,
        len: usize,
        buf: &'s mut Vec<f32>,
    ) -> Result<&'s [f32]> {
        debug_assert!(line < self.lines());
        assert!(start <= self.line_len() && len <= self.line_len() - start);
        let n = len;
        let step = *self.strides.last().expect("at least 1-d");
        // SAFETY: `start <= line_len`, so the offset stays within (or one past) the line.
        let base = unsafe { self.line_ptr(line).offset(start as isize * step) };
        if step == 1 || n <= 1 {
            // SAFETY: the segment's n elements are contiguous and valid for 'a (from_raw).
            let src = unsafe { std::slice::from_raw_parts(base, n) };
            if let Some(f) = T::as_f32(src) {
                return Ok(f);
            }
            crate::alloc::try_resize(buf, n, 0.0)?;
            T::to_f32_slice(src, buf);
        } else {
            buf.clear();
            buf.try_reserve_exact(n)
                .map_err(|_| crate::alloc::out_of_memory::<f32>(n))?;
            // SAFETY: base + i * step for i < n stays within the view (from_raw contract).
            buf.extend((0..n).map(|i| unsafe { *base.offset(i as isize * step) }.to_f32()));
        }
        Ok(buf)
    }

    /// The first element that is not finite in float32, in logical order, if any: its line,
    /// its offset in the line and its float32 value.
    pub fn first_nonfinite(&self) -> Result<Option<(usize, usize, f32)>> {
        let mut buf = Vec::new();
        for l in 0..self.lines() {
            let line = self.line(l, &mut buf)?;
            if let Some(i) = line.iter().position(|v| !v.is_finite()) {
                return Ok(Some((l, i, line[i])));
            }
        }
        Ok(None)
    }

    /// The error for an input that was seen to hold a value that is not finite in float32:
    /// non-finite input, or a float64 value beyond the float32 range.
    pub fn nonfinite_error(&self) -> QfastError {
        match self.first_nonfinite() {
            Err(e) => e,
            Ok(Some((l, i, value))) => {
                let step = *self.strides.last().expect("at least 1-d");
                // SAFETY: (l, i) is within the view (from_raw contract).
                let original = unsafe { *self.line_ptr(l).offset(i as isize * step) };
                let index = self.index_of(l, i);
                if let Some(wide) = T::as_finite_f64(original) {
                    QfastError::Overflow(format!(
                        "input value {wide:e} at index {} overflows float32, which qfast \
                         computes in; scale the data into the float32 range first",
                        crate::error::format_index(&index)
                    ))
                } else {
                    QfastError::NonFinite { index, value }
                }
            }
            Ok(None) => QfastError::InvalidArgument(format!(
                "input ({}) changed while it was being quantized",
                T::NAME
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_lines_and_indices() {
        let data: Vec<f64> = (0..24).map(f64::from).collect();
        // A transposed view of a [4, 6] array: shape [6, 4], strides [1, 6].
        // SAFETY: every index within [6, 4] maps inside data.
        let v = unsafe { Strided::from_raw(data.as_ptr(), &[6, 4], &[1, 6]) };
        let mut buf = Vec::new();
        assert_eq!(v.line(1, &mut buf).unwrap(), &[1.0, 7.0, 13.0, 19.0]);
        assert_eq!(v.index_of(5, 2), vec![5, 2]);
        assert!(v.first_nonfinite().unwrap().is_none());
    }

    #[test]
    fn contiguous_f32_lines_are_borrowed() {
        let data = [1.0f32, f32::NAN, 3.0, 4.0];
        let v = Strided::contiguous(&data, &[2, 2]).unwrap();
        let mut buf = Vec::new();
        assert_eq!(v.line(1, &mut buf).unwrap().as_ptr(), data[2..].as_ptr());
        let (l, i, value) = v.first_nonfinite().unwrap().unwrap();
        assert_eq!(v.index_of(l, i), vec![0, 1]);
        assert!(value.is_nan());
    }

    #[test]
    fn bf16_and_f16_convert_exactly() {
        let b = [bf16::from_f32(1.5), bf16::from_f32(-2.0)];
        let v = Strided::contiguous(&b, &[2]).unwrap();
        let mut buf = Vec::new();
        assert_eq!(v.line(0, &mut buf).unwrap(), &[1.5, -2.0]);
        let h = [f16::from_f32(0.25), f16::from_f32(65504.0)];
        let v = Strided::contiguous(&h, &[2]).unwrap();
        assert_eq!(v.line(0, &mut buf).unwrap(), &[0.25, 65504.0]);
    }
}
