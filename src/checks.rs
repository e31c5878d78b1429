//! The one home of the argument rules the kernels share (bits, group sizes, axes, positive
//! numbers), worded exactly as `python/qfast/_checks.py` words them: Python checks first, and
//! a caller that reaches a kernel directly gets the same message.

use crate::error::{QfastError, Result};
use std::fmt::Display;

fn invalid(msg: String) -> QfastError {
    QfastError::InvalidArgument(msg)
}

/// A code width a QTensor stores: 2 to 8.
pub fn check_bits(bits: u32) -> Result<u32> {
    if !(2..=8).contains(&bits) {
        return Err(invalid(format!(
            "bits={bits} is not supported; pass bits between 2 and 8"
        )));
    }
    Ok(bits)
}

/// `value` is at least `lo`.
pub fn check_at_least(value: usize, name: &str, lo: usize) -> Result<usize> {
    if value < lo {
        return Err(invalid(format!(
            "{name} must be at least {lo}, got {value}"
        )));
    }
    Ok(value)
}

/// A group size: at least 1.
pub fn check_group_size(group_size: usize) -> Result<usize> {
    check_at_least(group_size, "group_size", 1)
}

/// A group size that splits `n` values into whole groups (AWQ and HQQ reshape rows into
/// groups).
pub fn check_group_divides(group_size: usize, n: usize) -> Result<usize> {
    let g = check_group_size(group_size)?;
    if !n.is_multiple_of(g) {
        let divisors: Vec<usize> = (1..=n.min(256)).filter(|d| n.is_multiple_of(*d)).collect();
        let shown = &divisors[divisors.len().saturating_sub(12)..];
        return Err(invalid(format!(
            "group_size={g} does not divide the input size {n} (the last axis); pass one of \
             {shown:?}, or None for one group per row"
        )));
    }
    Ok(g)
}

/// An axis of an array of `ndim` dimensions (a 0-d array has axis 0).
pub fn check_axis(axis: usize, ndim: usize) -> Result<usize> {
    if axis >= ndim.max(1) {
        return Err(invalid(format!(
            "axis={axis} is out of range for an array with {ndim} dimensions"
        )));
    }
    Ok(axis)
}

/// A positive finite number.
pub fn check_positive<T: Into<f64> + Display + Copy>(value: T, name: &str) -> Result<T> {
    let v: f64 = value.into();
    if !(v.is_finite() && v > 0.0) {
        return Err(invalid(format!(
            "{name} must be a positive finite number, got {value}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn bits() {
        for b in 2..=8 {
            assert_eq!(check_bits(b), Ok(b));
        }
        for b in [0, 1, 9, u32::MAX] {
            assert_eq!(
                message(check_bits(b)),
                format!("bits={b} is not supported; pass bits between 2 and 8")
            );
        }
    }

    #[test]
    fn group_sizes() {
        assert_eq!(check_group_size(1), Ok(1));
        assert_eq!(
            message(check_group_size(0)),
            "group_size must be at least 1, got 0"
        );
        assert_eq!(check_group_divides(32, 64), Ok(32));
        assert_eq!(
            message(check_group_divides(0, 64)),
            "group_size must be at least 1, got 0"
        );
        assert_eq!(
            message(check_group_divides(3, 100)),
            "group_size=3 does not divide the input size 100 (the last axis); pass one of \
             [1, 2, 4, 5, 10, 20, 25, 50, 100], or None for one group per row"
        );
    }

    #[test]
    fn axes_and_positive_numbers() {
        assert_eq!(check_axis(0, 0), Ok(0));
        assert_eq!(check_axis(1, 2), Ok(1));
        assert_eq!(
            message(check_axis(2, 2)),
            "axis=2 is out of range for an array with 2 dimensions"
        );
        assert_eq!(check_positive(0.5f32, "scale"), Ok(0.5));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(message(check_positive(bad, "beta"))
                .starts_with("beta must be a positive finite number, got "));
        }
    }
}
