//! Where a pointer lives, and the reusable staging buffers for calls that bring
//! host data to the GPU.

use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::driver::sys::{self, CUmemorytype, CUpointer_attribute};

use super::driver::{DevPtr, Stream, check};
use crate::error::Result;

/// What a caller's pointer is, as far as a call is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Pageable or pinned host memory: the call is synchronous.
    Host,
    /// cudaMalloc'd or managed memory: kernels read it directly.
    Device,
}

/// Asks the driver about `address` (memory type and whether it is managed).
pub fn classify(address: usize) -> Place {
    let mut memory_type: u32 = 0;
    let mut managed: u32 = 0;
    let mut attributes = [CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CUpointer_attribute::CU_POINTER_ATTRIBUTE_IS_MANAGED];
    let mut data = [&mut memory_type as *mut u32 as *mut c_void, &mut managed as *mut u32 as *mut c_void];
    // SAFETY: two attributes, each with a 4-byte out-value; unknown (pageable)
    // pointers make the call fail or report memory type 0: both mean host.
    let result = unsafe { sys::cuPointerGetAttributes(2, attributes.as_mut_ptr(), data.as_mut_ptr(), address as DevPtr) };
    let device = memory_type == CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 || managed != 0;
    if result == sys::CUresult::CUDA_SUCCESS && device { Place::Device } else { Place::Host }
}

/// Free buffers of one kind, largest last; reused so a warmed-up caller's
/// staged calls allocate nothing.
#[derive(Default)]
struct Pool(Mutex<Vec<(usize, usize)>>);

impl Pool {
    fn take(&self, bytes: usize, allocate: impl FnOnce(usize) -> Result<usize>) -> Result<(usize, usize)> {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match free.iter().position(|&(_, size)| size >= bytes) {
            Some(i) => Ok(free.remove(i)),
            None => {
                drop(free);
                // Round up so that slightly larger later calls reuse the buffer.
                let size = bytes.next_power_of_two().max(1 << 16);
                Ok((allocate(size)?, size))
            }
        }
    }

    fn give(&self, buffer: (usize, usize)) {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        free.push(buffer);
        free.sort_by_key(|&(_, size)| size);
    }
}

/// Device buffers and pinned host buffers for staging.
#[derive(Default)]
pub struct Pools {
    device: Pool,
    pinned: Pool,
}

/// A staging pair borrowed from the pools for one call.
pub struct Staged {
    pub device: (usize, usize),
    pub pinned: (usize, usize),
}

impl Pools {
    pub fn take(&self, bytes: usize) -> Result<Staged> {
        let device = self.device.take(bytes, |size| {
            let mut ptr: DevPtr = 0;
            // SAFETY: a plain allocation into an out-pointer.
            check(unsafe { sys::cuMemAlloc_v2(&mut ptr, size) }, "cuMemAlloc (staging)")?;
            Ok(ptr as usize)
        })?;
        let pinned = self.pinned.take(bytes, |size| {
            let mut ptr: *mut c_void = std::ptr::null_mut();
            // SAFETY: as above, page-locked host memory.
            check(unsafe { sys::cuMemAllocHost_v2(&mut ptr, size) }, "cuMemAllocHost (staging)")?;
            Ok(ptr as usize)
        });
        match pinned {
            Ok(pinned) => Ok(Staged { device, pinned }),
            Err(e) => {
                self.device.give(device);
                Err(e)
            }
        }
    }

    pub fn give(&self, staged: Staged) {
        self.device.give(staged.device);
        self.pinned.give(staged.pinned);
    }
}

/// Host data -> device through the pinned buffer (enqueued on `stream`).
/// Safety: `src` holds `bytes` readable bytes; `staged` holds at least `bytes`.
pub unsafe fn upload(staged: &Staged, src: usize, bytes: usize, stream: Stream) -> Result<()> {
    unsafe {
        std::ptr::copy_nonoverlapping(src as *const u8, staged.pinned.0 as *mut u8, bytes);
        check(sys::cuMemcpyHtoDAsync_v2(staged.device.0 as DevPtr, staged.pinned.0 as *const c_void, bytes, stream), "cuMemcpyHtoDAsync")
    }
}

/// Device -> pinned buffer (enqueued); [`finish_download`] copies it out after a sync.
/// Safety: `staged` holds at least `bytes`.
pub unsafe fn download(staged: &Staged, bytes: usize, stream: Stream) -> Result<()> {
    check(unsafe { sys::cuMemcpyDtoHAsync_v2(staged.pinned.0 as *mut c_void, staged.device.0 as DevPtr, bytes, stream) }, "cuMemcpyDtoHAsync")
}

/// Pinned buffer -> the caller's host memory. Safety: `dst` holds `bytes` writable bytes.
pub unsafe fn finish_download(staged: &Staged, dst: usize, bytes: usize) {
    unsafe { std::ptr::copy_nonoverlapping(staged.pinned.0 as *const u8, dst as *mut u8, bytes) };
}

/// Safety: `stream` is a live stream of the current context (or NULL).
pub unsafe fn synchronize(stream: Stream) -> Result<()> {
    check(unsafe { sys::cuStreamSynchronize(stream) }, "cuStreamSynchronize")
}

/// Device -> staging buffer on the device (an aliased input's snapshot).
/// Safety: `src` holds `bytes` device bytes; `staged` holds at least `bytes`.
pub unsafe fn copy_on_device(staged: &Staged, src: DevPtr, bytes: usize, stream: Stream) -> Result<()> {
    check(unsafe { sys::cuMemcpyDtoDAsync_v2(staged.device.0 as DevPtr, src, bytes, stream) }, "cuMemcpyDtoDAsync")
}
