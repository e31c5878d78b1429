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
    let absmax = stats.min.abs().max(stats.max.abs());
    let absmax = if absmax.is_finite() { absmax } else { 0.0 }; // empty input
    QParams {
        scale: sanitize_scale(absmax / qmax as f32),
        zero_point: 0,
        qmin,
        qmax,
    }
}

/// Asymmetric grid: the range widened to include 0, `scale = (max - min) / (2^b - 1)`,
/// `zero_point = clamp(rint(-min / scale), 0, 2^b - 1)`.
pub fn asymmetric(stats: MinMax, bits: u32) -> Result<QParams> {
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
    let scale = sanitize_scale(width / qmax as f32);
    let zero_point = (-lo / scale)
        .round_ties_even()
        .clamp(qmin as f32, qmax as f32) as i32;
    Ok(QParams {
        scale,
        zero_point,
        qmin,
        qmax,
    })
}

/// The grid of `qfast.quantize` for the given scheme.
pub fn compute(stats: MinMax, bits: u32, signed: bool) -> Result<QParams> {
    if signed {
        Ok(symmetric(stats, bits))
    } else {
        asymmetric(stats, bits)
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
    fn overflowing_range_is_an_error() {
        assert!(asymmetric(mm(-3e38, 3e38), 8).is_err());
        assert!(symmetric(mm(-3e38, 3e38), 8).scale.is_finite());
    }
}
