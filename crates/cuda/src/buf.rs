//! Device memory in the shape the [`vlmix_engine::Device`] trait wants: an unsized borrowed buffer that
//! slices and splits like `[f32]`.
//!
//! [`CudaBuf`] is a `#[repr(transparent)]` newtype over `[DevF32]`, a slice of a zero-sized
//! element type whose data pointer is the device address and whose length is the element count.
//! A slice of a zero-sized type occupies no host bytes, so a `&CudaBuf` is a valid Rust reference
//! that the host never dereferences, two `&mut CudaBuf` over disjoint device ranges never alias, and
//! the borrow checker enforces the same exclusive/shared rules on device memory as on host slices.
//! Slicing is done here by address arithmetic (indexing a zero-sized slice would not move the
//! pointer). [`CudaVec`] owns an allocation and frees it, stream-ordered, on drop.

use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;

use super::Inner;

/// One f32 in device memory: nothing on the host.
#[derive(Clone, Copy, Debug)]
pub struct DevF32;

/// Borrowed device memory holding f32 (the CUDA device's `Device::Buf`).
#[repr(transparent)]
pub struct CudaBuf([DevF32]);

/// Bytes of one element.
const ELEM: u64 = std::mem::size_of::<f32>() as u64;

impl CudaBuf {
    /// # Safety
    /// `addr..addr + 4 * len` is device memory that outlives `'a` and that nothing else mutates
    /// through another reference while this one lives.
    pub(crate) unsafe fn from_raw<'a>(addr: u64, len: usize) -> &'a CudaBuf {
        let s: &[DevF32] = std::slice::from_raw_parts(std::ptr::without_provenance(addr as usize), len);
        &*(s as *const [DevF32] as *const CudaBuf)
    }

    /// # Safety
    /// As [`CudaBuf::from_raw`], and no other reference to that range lives meanwhile.
    pub(crate) unsafe fn from_raw_mut<'a>(addr: u64, len: usize) -> &'a mut CudaBuf {
        let s: &mut [DevF32] = std::slice::from_raw_parts_mut(std::ptr::without_provenance_mut(addr as usize), len);
        &mut *(s as *mut [DevF32] as *mut CudaBuf)
    }

    /// Device address of the first element.
    pub fn addr(&self) -> u64 {
        self.0.as_ptr() as usize as u64
    }

    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn check(&self, range: &Range<usize>) {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "cuda: slice {range:?} out of a buffer of {} elements",
            self.len()
        );
    }

    pub fn slice(&self, range: Range<usize>) -> &CudaBuf {
        self.check(&range);
        // SAFETY: a sub-range of this buffer, borrowed from it.
        unsafe { CudaBuf::from_raw(self.addr() + range.start as u64 * ELEM, range.len()) }
    }

    pub fn slice_mut(&mut self, range: Range<usize>) -> &mut CudaBuf {
        self.check(&range);
        // SAFETY: a sub-range of this buffer, exclusively borrowed from it.
        unsafe { CudaBuf::from_raw_mut(self.addr() + range.start as u64 * ELEM, range.len()) }
    }

    pub fn split_at_mut(&mut self, mid: usize) -> (&mut CudaBuf, &mut CudaBuf) {
        self.check(&(0..mid));
        let (addr, len) = (self.addr(), self.len());
        // SAFETY: two disjoint sub-ranges of this exclusively borrowed buffer.
        unsafe { (CudaBuf::from_raw_mut(addr, mid), CudaBuf::from_raw_mut(addr + mid as u64 * ELEM, len - mid)) }
    }
}

/// Owned device memory (the CUDA device's `Device::Owned`). Holds the device alive; frees its
/// allocation on the device's stream when dropped, after every kernel already queued on it.
pub struct CudaVec {
    addr: u64,
    len: usize,
    dev: Arc<Inner>,
}

impl CudaVec {
    /// `len` f32 of uninitialised device memory (at least one element is allocated, so the address
    /// is never null).
    pub(crate) fn alloc(dev: &Arc<Inner>, len: usize) -> CudaVec {
        let addr = dev.alloc_bytes(len.max(1) * ELEM as usize);
        CudaVec { addr, len, dev: dev.clone() }
    }
}

impl Deref for CudaVec {
    type Target = CudaBuf;
    fn deref(&self) -> &CudaBuf {
        // SAFETY: this allocation lives as long as `self`.
        unsafe { CudaBuf::from_raw(self.addr, self.len) }
    }
}

impl DerefMut for CudaVec {
    fn deref_mut(&mut self) -> &mut CudaBuf {
        // SAFETY: this allocation lives as long as `self`, borrowed exclusively.
        unsafe { CudaBuf::from_raw_mut(self.addr, self.len) }
    }
}

impl Drop for CudaVec {
    fn drop(&mut self) {
        self.dev.free_bytes(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fake addresses: the host never dereferences a CudaBuf, so these tests need no GPU.
    fn buf(len: usize) -> &'static mut CudaBuf {
        unsafe { CudaBuf::from_raw_mut(0x7000_0000, len) }
    }

    #[test]
    fn slices_move_the_address_by_whole_f32() {
        let b = buf(10);
        assert_eq!(std::mem::size_of_val(b), 0, "a device buffer occupies no host bytes");
        let s = b.slice(3..7);
        assert_eq!((s.addr(), s.len()), (0x7000_0000 + 12, 4));
        let s2 = s.slice(1..2);
        assert_eq!((s2.addr(), s2.len()), (0x7000_0000 + 16, 1));
        let (l, r) = b.split_at_mut(4);
        assert_eq!((l.addr(), l.len(), r.addr(), r.len()), (0x7000_0000, 4, 0x7000_0000 + 16, 6));
        let m = r.slice_mut(6..6);
        assert!(m.is_empty());
    }

    #[test]
    #[should_panic(expected = "out of a buffer of 10 elements")]
    fn slicing_past_the_end_panics() {
        buf(10).slice(5..11);
    }

    #[test]
    #[should_panic(expected = "out of a buffer of 3 elements")]
    fn splitting_past_the_end_panics() {
        buf(3).split_at_mut(4);
    }
}
