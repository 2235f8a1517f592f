//! Stream-ordered device scratch for one call: `cuMemAllocAsync` on the
//! caller's stream, freed on that stream when dropped (after the kernels
//! enqueued before it), so graph capture works and nothing outlives the call.

use cudarc::driver::sys;

use super::driver::{DevPtr, Stream, check, fill32};
use crate::error::Result;

pub struct Scratch {
    stream: Stream,
    ptrs: Vec<DevPtr>,
}

impl Scratch {
    pub fn new(stream: Stream) -> Self {
        Scratch { stream, ptrs: Vec::new() }
    }

    /// `bytes` of device memory, valid for the kernels enqueued on the stream
    /// before this scratch is dropped.
    pub fn alloc(&mut self, bytes: usize) -> Result<DevPtr> {
        let mut p = 0;
        // SAFETY: an out-pointer for a new allocation on the caller's stream.
        check(unsafe { sys::cuMemAllocAsync(&mut p, bytes, self.stream) }, "cuMemAllocAsync")?;
        self.ptrs.push(p);
        Ok(p)
    }

    /// `words` 32-bit words, each set to `value` in stream order.
    pub fn alloc_filled(&mut self, words: usize, value: u32) -> Result<DevPtr> {
        let p = self.alloc(words * 4)?;
        // SAFETY: `words` words just allocated on this stream.
        unsafe { fill32(self.stream, p, words, value)? };
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for &p in &self.ptrs {
            // SAFETY: allocated by cuMemAllocAsync above, freed once, in stream order.
            unsafe { sys::cuMemFreeAsync(p, self.stream) };
        }
    }
}
