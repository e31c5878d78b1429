//! Scale and zero point of `qfast.quantize`'s grids (see the numeric conventions in README).

use crate::error::{QfastError, Result};
use crate::simd::{MinMax, QParams};

/// The integer code range of a `bits`-wide grid: signed `[-2^(b-1), 2^(b-1) - 1]`, unsigned
/// `[0, 2^b - 1]`.
pub fn code_range(bits: u32, signed: bool) -> (i32, i32) {
    if signed {
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    } else {
        (0, (1 << bits) - 1)
    }
}

/// The float format a grid's scales are stored in. Grids are computed in float32, then each
/// scale is rounded to this format (to nearest, ties to even) before anything uses it, so the
/// codes, and the zero point, are exact for the scale as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScaleDtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl ScaleDtype {
    /// `"float32"`, `"float16"` or `"bfloat16"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "float32" => Ok(ScaleDtype::F32),
            "float16" => Ok(ScaleDtype::F16),
            "bfloat16" => Ok(ScaleDtype::BF16),
            other => Err(QfastError::InvalidArgument(format!(
                "scale_dtype {other} is not supported; pass float32, float16 or bfloat16"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScaleDtype::F32 => "float32",
            ScaleDtype::F16 => "float16",
            ScaleDtype::BF16 => "bfloat16",
        }
    }

    /// `s` rounded to the format, as a float32. A positive scale that would round to zero
    /// becomes the format's smallest positive value; one past the format's range becomes
    /// infinite (see [`Self::check`]).
    pub fn round(self, s: f32) -> f32 {
        let r = match self {
            ScaleDtype::F32 => return s,
            ScaleDtype::F16 => half::f16::from_f32(s).to_f32(),
            ScaleDtype::BF16 => half::bf16::from_f32(s).to_f32(),
        };
        if r == 0.0 && s > 0.0 {
            match self {
                ScaleDtype::F16 => half::f16::from_bits(1).to_f32(),
                _ => half::bf16::from_bits(1).to_f32(),
            }
        } else {
            r
        }
    }

    /// The next smaller positive value of the format below `s` (a value of the format).
    fn next_down(self, s: f32) -> f32 {
        match self {
            ScaleDtype::F32 => s.next_down(),
            ScaleDtype::F16 => half::f16::from_bits(half::f16::from_f32(s).to_bits() - 1).to_f32(),
            ScaleDtype::BF16 => {
                half::bf16::from_bits(half::bf16::from_f32(s).to_bits() - 1).to_f32()
            }
        }
    }

    /// [`Self::round`], as an error when the scale does not fit the format.
    pub fn round_checked(self, s: f32) -> Result<f32> {
        let r = self.round(s);
        if s.is_finite() && !r.is_finite() {
            return Err(QfastError::Overflow(format!(
                "a scale of {s:e} is larger than {} can hold; use scale_dtype=float32 (or \
                 bfloat16), or quantize per channel or per group",
                self.name()
            )));
        }
        Ok(r)
    }
}

/// A zero range gives scale 1; a scale that would be subnormal is raised to the smallest
/// normal float32, so that `x / scale` never overflows for finite `x` in range.
fn sanitize_scale(scale: f32) -> f32 {
    if scale == 0.0 {
        1.0
    } else if scale < f32::MIN_POSITIVE {
        f32::MIN_POSITIVE
    } else {
        scale
    }
}

/// Symmetric grid: `scale = max|x| / (2^(b-1) - 1)`, `zero_point = 0`.
pub fn symmetric(stats: MinMax, bits: u32) -> QParams {
    let (qmin, qmax) = code_range(bits, true);
    let p = QParams {
        scale: symmetric_scale(stats, qmax),
        zero_point: 0,
        qmin,
        qmax,
    };
    fit_symmetric(p, ScaleDtype::F32)
}

fn symmetric_scale(stats: MinMax, qmax: i32) -> f32 {
    let absmax = stats.min.abs().max(stats.max.abs());
    let absmax = if absmax.is_finite() { absmax } else { 0.0 }; // empty input
    sanitize_scale(absmax / qmax as f32)
}

/// Asymmetric grid: the range widened to include 0, `scale = (max - min) / (2^b - 1)`,
/// `zero_point = clamp(rint(-min / scale), 0, 2^b - 1)`.
pub fn asymmetric(stats: MinMax, bits: u32) -> Result<QParams> {
    asymmetric_as(stats, bits, ScaleDtype::F32)
}

/// [`asymmetric`] with the scale rounded to `dtype` before the zero point is computed.
fn asymmetric_as(stats: MinMax, bits: u32, dtype: ScaleDtype) -> Result<QParams> {
    let (qmin, qmax) = code_range(bits, false);
    let lo = stats.min.min(0.0);
    let hi = stats.max.max(0.0);
    let width = hi - lo;
    if !width.is_finite() {
        return Err(QfastError::Overflow(format!(
            "the range [{lo:e}, {hi:e}] is wider than float32 can represent; \
             use symmetric=True, or quantize per channel or per group"
        )));
    }
    let mut scale = dtype.round_checked(sanitize_scale(width / qmax as f32))?;
    loop {
        let zero_point = (-lo / scale)
            .round_ties_even()
            .clamp(qmin as f32, qmax as f32) as i32;
        let p = QParams {
            scale,
            zero_point,
            qmin,
            qmax,
        };
        if dequantizes_finite(&p, qmin, qmax) {
            return Ok(p);
        }
        scale = dtype.next_down(scale);
    }
}

/// Whether the codes `[lo, hi]` dequantize to finite float32s (`scale · (q - zero)`). Only a
/// range within a rounding step of float32's maximum fails it (e.g. `max|x| = 3.4028235e38`
/// with 8-bit codes: `127 · (max / 127)` rounds up past the maximum); the grids then lower
/// the scale one step of its format at a time until it holds, and `x / scale` still rounds
/// to the same extreme code.
fn dequantizes_finite(p: &QParams, lo: i32, hi: i32) -> bool {
    let far = (hi - p.zero_point).max(p.zero_point - lo) as f32;
    (far * p.scale).is_finite()
}

/// `p` with its scale lowered (see [`dequantizes_finite`]) so that the codes data can reach,
/// `[-qmax, qmax]`, dequantize finite (`qmin = -qmax - 1` only comes from given codes).
fn fit_symmetric(mut p: QParams, dtype: ScaleDtype) -> QParams {
    while !dequantizes_finite(&p, -p.qmax, p.qmax) {
        p.scale = dtype.next_down(p.scale);
    }
    p
}

/// The grid of `qfast.quantize` for the given scheme, its scale rounded to `dtype`.
pub fn compute(stats: MinMax, bits: u32, signed: bool, dtype: ScaleDtype) -> Result<QParams> {
    if signed {
        let (qmin, qmax) = code_range(bits, true);
        let p = QParams {
            scale: dtype.round_checked(symmetric_scale(stats, qmax))?,
            zero_point: 0,
            qmin,
            qmax,
        };
        Ok(fit_symmetric(p, dtype))
    } else {
        asymmetric_as(stats, bits, dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mm(min: f32, max: f32) -> MinMax {
        MinMax {
            min,
            max,
            finite: true,
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(code_range(8, true), (-128, 127));
        assert_eq!(code_range(4, false), (0, 15));
        assert_eq!(code_range(2, true), (-2, 1));
    }

    #[test]
    fn zero_and_tiny_ranges() {
        assert_eq!(symmetric(mm(0.0, 0.0), 8).scale, 1.0);
        assert_eq!(symmetric(MinMax::EMPTY, 8).scale, 1.0);
        assert_eq!(symmetric(mm(0.0, 1e-40), 8).scale, f32::MIN_POSITIVE);
        let p = asymmetric(mm(0.0, 0.0), 8).unwrap();
        assert_eq!((p.scale, p.zero_point), (1.0, 0));
    }

    #[test]
    fn seed_example_grid() {
        // The 4x4 example of the seed document: min -3.16227766, max 3.14159265.
        let p = asymmetric(mm(-3.162_277_6, std::f32::consts::PI), 8).unwrap();
        assert!((p.scale - 0.024_721_08).abs() < 1e-7);
        assert_eq!(p.zero_point, 128);
    }

    #[test]
    fn rounded_scales() {
        let s = 0.1f32;
        assert_eq!(ScaleDtype::F32.round(s), s);
        assert_eq!(ScaleDtype::F16.round(s), half::f16::from_f32(s).to_f32());
        assert_eq!(ScaleDtype::BF16.round(s), half::bf16::from_f32(s).to_f32());
        // Too small for float16: its smallest subnormal, never zero.
        assert_eq!(ScaleDtype::F16.round(1e-30), 2f32.powi(-24));
        assert!(ScaleDtype::F16.round_checked(1e5).is_err());
        // The zero point is computed against the rounded scale.
        let stats = mm(-1.0, 2.0);
        let p = compute(stats, 4, false, ScaleDtype::F16).unwrap();
        assert_eq!(p.scale, half::f16::from_f32(3.0 / 15.0).to_f32());
        assert_eq!(p.zero_point, (1.0 / p.scale).round_ties_even() as i32);
        let q = compute(stats, 4, true, ScaleDtype::BF16).unwrap();
        assert_eq!(q.scale, half::bf16::from_f32(2.0 / 7.0).to_f32());
    }

    #[test]
    fn extreme_codes_dequantize_finite() {
        let max = f32::MAX;
        for bits in 2..=8 {
            for dtype in [ScaleDtype::F32, ScaleDtype::BF16] {
                for (lo, hi, signed) in [(-max, max, true), (0.0, max, false), (-max, 0.0, false)] {
                    let Ok(p) = compute(mm(lo, hi), bits, signed, dtype) else {
                        // A scale past bfloat16's largest value is an error, not a grid.
                        assert_eq!(dtype, ScaleDtype::BF16);
                        continue;
                    };
                    let lowest = if signed { -p.qmax } else { p.qmin };
                    for q in lowest..=p.qmax {
                        let x = (q - p.zero_point) as f32 * p.scale;
                        assert!(x.is_finite(), "{bits} {dtype:?} {lo} {hi} code {q}");
                    }
                    // The extremes still come back within a step of the grid.
                    for x in [lo, hi] {
                        let q = ((x / p.scale).round_ties_even() + p.zero_point as f32)
                            .clamp(p.qmin as f32, p.qmax as f32);
                        let back = (q - p.zero_point as f32) as f64 * p.scale as f64;
                        assert!(
                            (back - x as f64).abs() <= p.scale as f64,
                            "{bits} {p:?} {x}"
                        );
                    }
                }
            }
        }
        // Ordinary ranges keep the textbook scale.
        assert_eq!(symmetric(mm(-1.0, 127.0), 8).scale, 1.0);
    }

    #[test]
    fn overflowing_range_is_an_error() {
        assert!(asymmetric(mm(-3e38, 3e38), 8).is_err());
        assert!(symmetric(mm(-3e38, 3e38), 8).scale.is_finite());
    }
}
