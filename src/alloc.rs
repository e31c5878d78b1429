//! Fallible allocation of buffers whose size depends on the input: a failure is a
//! [`QfastError::OutOfMemory`] (Python `MemoryError`), never an abort of the process.

use crate::error::{QfastError, Result};

/// The error for a buffer of `count` elements of `T` that could not be allocated.
pub fn out_of_memory<T>(count: usize) -> QfastError {
    let bytes = count.saturating_mul(std::mem::size_of::<T>());
    QfastError::OutOfMemory(format!(
        "cannot allocate {bytes} bytes ({count} x {} bytes) for qfast's buffers; free memory or \
         process the data in smaller pieces",
        std::mem::size_of::<T>()
    ))
}

/// An empty vector with room for exactly `count` elements.
pub fn try_with_capacity<T>(count: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(count)
        .map_err(|_| out_of_memory::<T>(count))?;
    Ok(v)
}

/// `vec![value; count]`, fallibly.
pub fn try_vec<T: Clone>(value: T, count: usize) -> Result<Vec<T>> {
    let mut v = try_with_capacity(count)?;
    v.resize(count, value);
    Ok(v)
}

/// `count` zeros (or defaults), fallibly.
pub fn zeroed<T: Clone + Default>(count: usize) -> Result<Vec<T>> {
    try_vec(T::default(), count)
}

/// Resizes a scratch vector to `count` elements (filling new ones with `value`), fallibly.
pub fn try_resize<T: Clone>(v: &mut Vec<T>, count: usize, value: T) -> Result<()> {
    if count > v.len() {
        v.try_reserve_exact(count - v.len())
            .map_err(|_| out_of_memory::<T>(count))?;
    }
    v.resize(count, value);
    Ok(())
}

/// The product of `dims`, or an error naming `what` when it overflows `usize`.
pub fn checked_product(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            QfastError::OutOfMemory(format!(
                "{what} of shape {dims:?} has more elements than this machine can address; \
                 process the data in smaller pieces"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_errors() {
        assert!(matches!(
            try_vec(0u64, usize::MAX / 4),
            Err(QfastError::OutOfMemory(_))
        ));
        assert!(matches!(
            zeroed::<f32>(isize::MAX as usize),
            Err(QfastError::OutOfMemory(_))
        ));
        let mut v = vec![1u8];
        assert!(try_resize(&mut v, usize::MAX, 0).is_err());
        assert_eq!(try_vec(7u8, 3).unwrap(), vec![7, 7, 7]);
        assert!(checked_product(&[1 << 40, 1 << 40], "x").is_err());
        assert_eq!(checked_product(&[3, 4], "x").unwrap(), 12);
    }
}
