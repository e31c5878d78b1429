//! A mutable slice that parallel tasks write in disjoint parts.

use std::marker::PhantomData;

/// Shares `&mut [T]` between tasks that each write their own, disjoint elements (e.g. the
/// column block of a matrix product that they compute). Creating it borrows the slice mutably
/// for its lifetime; every access is `unsafe` and must not overlap another task's.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the wrapper only hands out slices through `slice`, whose contract makes the tasks'
// accesses disjoint; `T: Send` lets the elements be written from other threads.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(data: &'a mut [T]) -> Self {
        SharedMut {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            _borrow: PhantomData,
        }
    }

    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// No other live slice from this wrapper may overlap these elements.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(
            start <= self.len && len <= self.len - start,
            "out of bounds"
        );
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
