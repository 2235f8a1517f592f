//! Where a pointer lives, the reusable staging buffers for calls that bring
//! host data to the GPU, and the memory, copies and streams of the
//! device-memory entry points (`cudann_malloc`, ...).

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
    /// cudaMalloc'd or managed memory of this device: kernels read it directly.
    Device(i32),
}

/// Asks the driver about `address` (memory type, whether it is managed, and
/// the device it belongs to).
pub fn classify(address: usize) -> Place {
    let (mut memory_type, mut managed, mut ordinal): (u32, u32, i32) = (0, 0, 0);
    let mut attributes = [
        CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
        CUpointer_attribute::CU_POINTER_ATTRIBUTE_IS_MANAGED,
        CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
    ];
    let mut data = [&mut memory_type as *mut u32 as *mut c_void, &mut managed as *mut u32 as *mut c_void, &mut ordinal as *mut i32 as *mut c_void];
    // SAFETY: three attributes, each with a 4-byte out-value; unknown (pageable)
    // pointers make the call fail or report memory type 0: both mean host.
    let result = unsafe { sys::cuPointerGetAttributes(3, attributes.as_mut_ptr(), data.as_mut_ptr(), address as DevPtr) };
    let device = memory_type == CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 || managed != 0;
    if result == sys::CUresult::CUDA_SUCCESS && device { Place::Device(ordinal) } else { Place::Host }
}

/// Free buffers of one kind, smallest first; reused so a warmed-up caller's
/// staged calls allocate nothing. At most [`POOL_KEEP`] bytes are kept: a
/// larger buffer given back is released, so one huge call does not pin its
/// staging memory for the life of the process.
#[derive(Default)]
struct Pool(Mutex<Vec<(usize, usize)>>);

/// The bytes each pool keeps for reuse.
const POOL_KEEP: usize = 256 << 20;

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

    /// Keeps `buffer` for reuse, or releases it past the cap.
    fn give(&self, buffer: (usize, usize), release: impl FnOnce(usize)) {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = free.iter().map(|&(_, size)| size).sum();
        if kept + buffer.1 > POOL_KEEP {
            drop(free);
            release(buffer.0);
            return;
        }
        free.push(buffer);
        free.sort_by_key(|&(_, size)| size);
    }
}

/// Device buffers and pinned host buffers for staging (each GPU has its own).
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

/// Releases staging memory. Safety: no work still uses the buffer, and its
/// GPU's context is current (staged calls hold it).
fn free_device(ptr: usize) {
    unsafe { sys::cuMemFree_v2(ptr as DevPtr) };
}

fn free_pinned(ptr: usize) {
    unsafe { sys::cuMemFreeHost(ptr as *mut c_void) };
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
                self.device.give(device, free_device);
                Err(e)
            }
        }
    }

    /// Gives a pair back once the call's work on it is finished.
    pub fn give(&self, staged: Staged) {
        self.device.give(staged.device, free_device);
        self.pinned.give(staged.pinned, free_pinned);
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

/// `bytes` (> 0) of memory on the current context's device (cudaMalloc).
pub fn allocate_device(bytes: usize) -> Result<usize> {
    let mut ptr: DevPtr = 0;
    // SAFETY: a plain allocation into an out-pointer.
    check(unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) }, "cuMemAlloc")?;
    Ok(ptr as usize)
}

/// `bytes` (> 0) of page-locked host memory (cudaMallocHost).
pub fn allocate_pinned(bytes: usize) -> Result<usize> {
    let mut ptr: *mut c_void = std::ptr::null_mut();
    // SAFETY: as above.
    check(unsafe { sys::cuMemAllocHost_v2(&mut ptr, bytes) }, "cuMemAllocHost")?;
    Ok(ptr as usize)
}

/// Safety: `ptr` came from [`allocate_device`] in the current context.
pub unsafe fn release_device(ptr: usize) -> Result<()> {
    check(unsafe { sys::cuMemFree_v2(ptr as DevPtr) }, "cuMemFree")
}

/// Safety: `ptr` came from [`allocate_pinned`].
pub unsafe fn release_pinned(ptr: usize) -> Result<()> {
    check(unsafe { sys::cuMemFreeHost(ptr as *mut c_void) }, "cuMemFreeHost")
}

/// Copies `bytes` on `stream`, the direction taken from the pointers (unified
/// addressing). Safety: both ranges are valid and do not overlap.
pub unsafe fn copy(dst: usize, src: usize, bytes: usize, stream: Stream) -> Result<()> {
    check(unsafe { sys::cuMemcpyAsync(dst as DevPtr, src as DevPtr, bytes, stream) }, "cuMemcpyAsync")
}

/// Sets `bytes` device bytes to `value` on `stream`. Safety: a valid device range.
pub unsafe fn fill(ptr: usize, value: u8, bytes: usize, stream: Stream) -> Result<()> {
    check(unsafe { sys::cuMemsetD8Async(ptr as DevPtr, value, bytes, stream) }, "cuMemsetD8Async")
}

/// A new stream in the current context (cudaStreamCreate's flags: it waits for
/// the legacy default stream, like every stream PyTorch callers know).
pub fn create_stream() -> Result<Stream> {
    let mut stream = std::ptr::null_mut();
    // SAFETY: creation into an out-pointer.
    check(unsafe { sys::cuStreamCreate(&mut stream, 0) }, "cuStreamCreate")?;
    Ok(stream)
}

/// Safety: a live stream of the current context, not used again.
pub unsafe fn destroy_stream(stream: Stream) -> Result<()> {
    check(unsafe { sys::cuStreamDestroy_v2(stream) }, "cuStreamDestroy")
}

/// Waits for all work of the current context.
pub fn synchronize_device() -> Result<()> {
    // SAFETY: no arguments.
    check(unsafe { sys::cuCtxSynchronize() }, "cuCtxSynchronize")
}

/// Free and total memory of the current context's device.
pub fn info() -> Result<(u64, u64)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: two out-pointers.
    check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }, "cuMemGetInfo")?;
    Ok((free as u64, total as u64))
}
