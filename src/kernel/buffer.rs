//! Output buffers that the CPU kernels write in full, handed out without zeroing them first
//! (zeroing every activation-sized output costs about 6 % of a batch-8 forward pass).

use core::mem::{ManuallyDrop, MaybeUninit};

/// A buffer of `len` values, none written yet.
pub(super) fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut buf = Vec::with_capacity(len);
    buf.resize_with(len, MaybeUninit::uninit);
    buf
}

/// The values of `buf`, once every one of them has been written.
///
/// # Safety
/// Every element of `buf` has been written.
pub(super) unsafe fn assume_init(buf: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut buf = ManuallyDrop::new(buf);
    let (ptr, len, capacity) = (buf.as_mut_ptr(), buf.len(), buf.capacity());
    // SAFETY: `MaybeUninit<f32>` has the size and alignment of `f32`; the caller guarantees
    // that the `len` elements are initialised; the allocation (pointer, length, capacity) is
    // handed over whole and `buf` is not dropped.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, capacity) }
}

/// `buf` as the `f32` values it holds.
///
/// # Safety
/// Every element of `buf` has been written.
pub(super) unsafe fn assume_init_mut(buf: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the size and alignment of `f32`, and the caller
    // guarantees that every element is initialised; the borrow of `buf` is handed over.
    unsafe { &mut *(buf as *mut [MaybeUninit<f32>] as *mut [f32]) }
}
