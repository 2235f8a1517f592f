//! Stream-ordered device scratch for one call: `cuMemAllocAsync` on the
//! caller's stream, freed on that stream when dropped (after the kernels
//! enqueued before it), so graph capture works and nothing outlives the call.

use cudarc::driver::sys;

use super::driver::{DevPtr, Stream, check, fill32};
use crate::error::Result;

/// Freed scratch the device's default memory pool keeps for the next call.
/// Its default keeps none: every synchronisation hands freed memory back and
/// the next call maps it again (2% of RMSNorm backward's time at 16384 x 4096
/// on an H200, `bench/RESULTS.md`).
const KEEP_FREED_BYTES: u64 = 256 << 20;

/// Has the pool of `device` keep up to [`KEEP_FREED_BYTES`] of freed memory,
/// unless the program set a threshold of its own. Only speed depends on it,
/// so a driver that refuses leaves the pool as it was.
pub fn keep_freed_memory(device: sys::CUdevice) {
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    let (mut pool, mut threshold) = (std::ptr::null_mut(), 0u64);
    // SAFETY: out-pointers to a pool handle and a u64, the attribute's type.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, device) != sys::CUresult::CUDA_SUCCESS
            || sys::cuMemPoolGetAttribute(pool, attr, (&raw mut threshold).cast()) != sys::CUresult::CUDA_SUCCESS
            || threshold != 0
        {
            return;
        }
        let mut keep = KEEP_FREED_BYTES;
        sys::cuMemPoolSetAttribute(pool, attr, (&raw mut keep).cast());
    }
}

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
