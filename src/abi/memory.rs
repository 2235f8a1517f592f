//! Device memory, copies, streams and devices: what CuPy gives Python users,
//! for every caller. On the GPU backend these are the CUDA driver's (primary
//! context of the calling thread's current device, so pointers and streams
//! interoperate with the CUDA runtime and PyTorch); on the CPU backend the same
//! program runs unchanged: memory is host memory, copies are copies, streams
//! are handles that do nothing.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::boundary::ffi_fn;
use crate::check::{out, put, require};
use crate::dispatch::{self, Requested};
use crate::error::{Result, invalid};
use crate::gpu::memory::{self as device, Place};
use crate::gpu::{self, Gpu};
use crate::handles::{self, Allocation, Memory, StreamKind};

/// A byte count: `>= 0` and at most 2^60, the cap on every size (docs/ABI.md "Limits").
fn bytes(name: &str, value: i64) -> Result<usize> {
    const MAX_BYTES: i64 = 1 << 60;
    usize::try_from(value)
        .ok()
        .filter(|_| value <= MAX_BYTES)
        .ok_or_else(|| invalid(format!("{name} must be between 0 and 2^60 (got {value})")))
}

/// Allocates `bytes` on the backend's memory: `pinned` asks for page-locked
/// host memory on the GPU backend.
fn allocate(bytes: usize, pinned: bool) -> Result<Allocation> {
    let (start, memory) = match dispatch::chosen_gpu()? {
        None => (crate::cpu::memory::allocate(bytes)?, Memory::Host),
        Some(g) => {
            let _current = g.enter()?;
            if pinned {
                (device::allocate_pinned(bytes)?, Memory::Pinned(g.ordinal))
            } else {
                (device::allocate_device(bytes)?, Memory::Device(g.ordinal))
            }
        }
    };
    let allocation = Allocation { start, bytes, memory };
    handles::add_allocation(allocation);
    Ok(allocation)
}

/// The body of both allocation calls: checks, allocates, stores the pointer.
unsafe fn malloc(ptr: *mut *mut c_void, size: i64, pinned: bool) -> Result<()> {
    let ptr = out("ptr", ptr)?;
    let size = bytes("bytes", size)?;
    let start = if size == 0 { 0 } else { allocate(size, pinned)?.start };
    unsafe { ptr.write(start as *mut c_void) };
    Ok(())
}

/// Allocates `bytes` on the calling thread's current device (cudaMalloc) and
/// stores the pointer in `*ptr`; its contents are unspecified. On the CPU
/// backend (no usable GPU, or `CUDANN_BACKEND=cpu`) the memory is host memory,
/// 64-byte aligned and zeroed, so the same program runs there unchanged.
/// `bytes == 0` stores NULL. Free it with `cudann_free`. Returns -2 for a NULL
/// `ptr` or a negative `bytes`, -4 when the memory is not there (`*ptr` is
/// then untouched), -1 with `CUDANN_BACKEND=cuda` and no usable GPU.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_malloc(ptr: *mut *mut c_void, bytes: i64) -> i32 {
    ffi_fn!("cudann_malloc", { unsafe { malloc(ptr, bytes, false) } })
}

/// Allocates `bytes` of page-locked host memory (cudaMallocHost): the host
/// side of asynchronous copies. The CPU backend gives plain host memory, as
/// `cudann_malloc` does. Free it with `cudann_free`. Errors as `cudann_malloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_malloc_host(ptr: *mut *mut c_void, bytes: i64) -> i32 {
    ffi_fn!("cudann_malloc_host", { unsafe { malloc(ptr, bytes, true) } })
}

/// Frees memory from `cudann_malloc` or `cudann_malloc_host` (NULL: nothing to
/// do). Like cudaFree, it first waits for the device's work. Memory is given
/// back to the system (or driver) at once. Returns -2 for a pointer that is not
/// the start of a live allocation from this library (double free, an interior
/// pointer, memory from elsewhere); nothing is freed then.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_free(ptr: *mut c_void) -> i32 {
    ffi_fn!("cudann_free", {
        if ptr.is_null() {
            return Ok(());
        }
        let a = handles::remove_allocation(ptr as usize)?;
        match a.memory {
            // SAFETY: the registry held it: allocated here and not yet freed.
            Memory::Host => unsafe { crate::cpu::memory::release(a.start, a.bytes) },
            Memory::Pinned(ordinal) => {
                let _current = gpu::device(ordinal)?.enter()?;
                unsafe { device::release_pinned(a.start)? }
            }
            Memory::Device(ordinal) => {
                let _current = gpu::device(ordinal)?.enter()?;
                unsafe { device::release_device(a.start)? }
            }
        }
        Ok(())
    })
}

/// Checks a copy's or fill's range against the library's allocations.
fn range(name: &str, ptr: *const c_void, size: usize) -> Result<()> {
    require(!ptr.is_null(), || format!("{name} is NULL"))?;
    handles::check_range(name, ptr as usize, size)
}

/// The GPU a memory call runs on: the stream's if it is the library's, else
/// the device owning `ptrs` (device memory), else the calling thread's.
fn gpu_for(current: &'static Gpu, stream: StreamKind, ptrs: &[usize]) -> Result<&'static Gpu> {
    if let StreamKind::Ours(Some(ordinal)) = stream {
        return gpu::device(ordinal);
    }
    for &p in ptrs {
        if let Place::Device(ordinal) = device::classify(p) {
            return gpu::device(ordinal);
        }
    }
    Ok(current)
}

/// Copies `bytes` from `src` to `dst`, each host or device memory (the
/// direction comes from the pointers), ordered on `stream` (NULL: the default
/// stream). Asynchronous between device memory and page-locked host memory
/// (`cudann_malloc_host`) and within the device; with pageable host memory (a
/// Go slice, a numpy array) it returns only once the source has been read (to
/// the device) or the data has arrived (from the device), as cudaMemcpyAsync
/// does. On the CPU backend it is a plain copy. Returns -2 for NULL pointers
/// with `bytes > 0`, a negative `bytes`, overlapping ranges, a range that runs
/// past the end of a library allocation, or a destroyed stream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_memcpy(dst: *mut c_void, src: *const c_void, bytes: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_memcpy", { unsafe { copy(dst, src, self::bytes("bytes", bytes)?, stream) } })
}

/// `cudann_memcpy` of `size` checked bytes.
pub(super) unsafe fn copy(dst: *mut c_void, src: *const c_void, size: usize, stream: *mut c_void) -> Result<()> {
    let kind = handles::stream(stream)?;
    if size == 0 {
        return Ok(());
    }
    range("dst", dst, size)?;
    range("src", src, size)?;
    let (d, s) = (dst as usize, src as usize);
    require(d.abs_diff(s) >= size, || format!("dst and src overlap ({size} bytes {} apart)", d.abs_diff(s)))?;
    match dispatch::chosen_gpu()? {
        // SAFETY: the caller's ranges, checked to be disjoint.
        None => unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, size) },
        Some(current) => {
            let _current = gpu_for(current, kind, &[d, s])?.enter()?;
            unsafe { device::copy(d, s, size, stream.cast())? }
        }
    }
    Ok(())
}

/// Sets `bytes` bytes at `ptr` to `value`'s low byte (as memset and cudaMemset
/// do), ordered on `stream`: asynchronous on device memory; host memory is set
/// once the stream's earlier work is done. Returns -2 for NULL with
/// `bytes > 0`, a negative `bytes`, a range past the end of a library
/// allocation, or a destroyed stream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_memset(ptr: *mut c_void, value: c_int, bytes: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_memset", {
        let size = self::bytes("bytes", bytes)?;
        let kind = handles::stream(stream)?;
        if size == 0 {
            return Ok(());
        }
        range("ptr", ptr, size)?;
        let byte = value as u8;
        let host = match dispatch::chosen_gpu()? {
            None => true,
            Some(current) => {
                let g = gpu_for(current, kind, &[ptr as usize])?;
                let _current = g.enter()?;
                if device::classify(ptr as usize) == Place::Host {
                    unsafe { device::synchronize(stream.cast())? };
                    true
                } else {
                    unsafe { device::fill(ptr as usize, byte, size, stream.cast())? };
                    false
                }
            }
        };
        if host {
            // SAFETY: the caller's range of `size` bytes.
            unsafe { std::ptr::write_bytes(ptr as *mut u8, byte, size) };
        }
        Ok(())
    })
}

/// The next CPU-backend stream handle (nothing is behind it).
static CPU_STREAMS: AtomicUsize = AtomicUsize::new(0x10000);

/// Creates a stream on the calling thread's current device and stores it in
/// `*stream`: a real `CUstream` (cudaStream_t), usable as the `stream` of every
/// `cuda_*`/`cudann_*` call and of the CUDA runtime. It waits for the legacy
/// default stream, as cudaStreamCreate's streams do. On the CPU backend it is
/// a handle that does nothing (calls on it complete before they return).
/// Destroy it with `cudann_stream_destroy`. Returns -2 for a NULL `stream`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_stream_create(stream: *mut *mut c_void) -> i32 {
    ffi_fn!("cudann_stream_create", {
        let stream = out("stream", stream)?;
        let (handle, device) = match dispatch::chosen_gpu()? {
            // A value never handed out before (a destroyed handle stays refused)
            // that looks like an address: bindings keep handles in pointer types,
            // and Go's runtime kills a program holding one below 4096.
            None => (CPU_STREAMS.fetch_add(16, Ordering::Relaxed), None),
            Some(g) => {
                let _current = g.enter()?;
                (device::create_stream()? as usize, Some(g.ordinal))
            }
        };
        handles::add_stream(handle, device);
        unsafe { stream.write(handle as *mut c_void) };
        Ok(())
    })
}

/// Destroys a stream from `cudann_stream_create`; work already enqueued on it
/// still completes. Returns -2 for NULL (the default stream), a stream the
/// library did not create, or one already destroyed; a destroyed stream passed
/// to any later call is -2 as well.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_stream_destroy(stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_stream_destroy", {
        require(!stream.is_null(), || "stream is NULL (the default stream cannot be destroyed)".to_string())?;
        match handles::remove_stream(stream as usize)? {
            None => {}
            Some(ordinal) => {
                let _current = gpu::device(ordinal)?.enter()?;
                unsafe { device::destroy_stream(stream.cast())? }
            }
        }
        Ok(())
    })
}

/// Waits until all work enqueued on `stream` (NULL: the default stream of the
/// current device) is done. Streams made elsewhere (PyTorch, CuPy) may be
/// passed. Returns -2 for a destroyed stream; on the CPU backend it returns at
/// once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_stream_synchronize(stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_stream_synchronize", {
        let kind = handles::stream(stream)?;
        if let Some(current) = dispatch::chosen_gpu()? {
            let _current = gpu_for(current, kind, &[])?.enter()?;
            unsafe { device::synchronize(stream.cast())? };
        }
        Ok(())
    })
}

/// Waits until all work on the calling thread's current device is done
/// (cudaDeviceSynchronize); returns at once on the CPU backend.
#[unsafe(no_mangle)]
pub extern "C" fn cudann_device_synchronize() -> i32 {
    ffi_fn!("cudann_device_synchronize", {
        if let Some(g) = dispatch::chosen_gpu()? {
            let _current = g.enter()?;
            device::synchronize_device()?;
        }
        Ok(())
    })
}

/// Stores the number of GPUs calls can use in `*count`: 0 on the CPU backend.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_device_count(count: *mut c_int) -> i32 {
    ffi_fn!("cudann_device_count", {
        let count = out("count", count)?;
        let n = if dispatch::chosen_gpu()?.is_some() { gpu::count()? } else { 0 };
        unsafe { count.write(n) };
        Ok(())
    })
}

/// Makes `device` the calling thread's current device (cudaSetDevice: its
/// primary context becomes current), where `cudann_malloc`, streams and
/// host-operand calls go. Calls on device pointers run on the device that owns
/// them, whatever the current one. On the CPU backend only device 0 exists.
/// Returns -2 for a device that does not exist.
#[unsafe(no_mangle)]
pub extern "C" fn cudann_set_device(device: c_int) -> i32 {
    ffi_fn!("cudann_set_device", {
        match dispatch::chosen_gpu()? {
            None => require(device == 0, || format!("device {device} does not exist (the CPU backend has device 0 only)")),
            Some(_) => gpu::device(device)?.select(),
        }
    })
}

/// Stores the calling thread's current device in `*device` (0 on the CPU
/// backend, and on a thread that never chose one).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_get_device(device: *mut c_int) -> i32 {
    ffi_fn!("cudann_get_device", {
        let device = out("device", device)?;
        let ordinal = if dispatch::chosen_gpu()?.is_some() { gpu::current_ordinal()? } else { 0 };
        unsafe { device.write(ordinal) };
        Ok(())
    })
}

/// Stores the free and total memory of the current device in bytes
/// (cudaMemGetInfo); on the CPU backend, the machine's available and total
/// memory. Returns -2 for a NULL pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_mem_info(free_bytes: *mut i64, total_bytes: *mut i64) -> i32 {
    ffi_fn!("cudann_mem_info", {
        let (free_out, total_out) = (out("free_bytes", free_bytes)?, out("total_bytes", total_bytes)?);
        let (free, total) = match dispatch::chosen_gpu()? {
            None => crate::cpu::memory::info()?,
            Some(g) => {
                let _current = g.enter()?;
                device::info()?
            }
        };
        unsafe {
            put("free_bytes", free_out, free as i64)?;
            put("total_bytes", total_out, total as i64)?;
        }
        Ok(())
    })
}

/// Which backend serves calls on this thread, and why, e.g. "cuda: NVIDIA
/// H200, driver 13.0, sm_90 (device 0 of 1)", "cpu: no CUDA driver (libcuda)
/// on this machine", "cpu: CUDANN_BACKEND=cpu", or "none: CUDANN_BACKEND=cuda,
/// but ..." (every call is then -1). The string stays valid until the next
/// call of this function on the same thread. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn cudann_backend() -> *const c_char {
    thread_local! {
        static TEXT: RefCell<CString> = RefCell::new(CString::default());
    }
    let text = std::panic::catch_unwind(backend).unwrap_or_else(|_| "none: internal error while probing the backend".to_string());
    TEXT.with(|cell| {
        *cell.borrow_mut() = CString::new(text.replace('\0', " ")).unwrap_or_default();
        cell.borrow().as_ptr()
    })
}

fn backend() -> String {
    let requested = match dispatch::requested() {
        Ok(r) => r,
        Err(e) => return format!("none: {e}"),
    };
    if requested == Requested::Cpu {
        return "cpu: CUDANN_BACKEND=cpu".to_string();
    }
    let described = gpu::get().and_then(|g| Ok(format!("cuda: {} (device {} of {})", gpu::describe(g.ordinal)?, g.ordinal, gpu::count()?)));
    match described {
        Ok(text) => text,
        Err(e) if requested == Requested::Auto => format!("cpu: {e}"),
        Err(e) => format!("none: CUDANN_BACKEND=cuda, but the GPU is unusable: {e}"),
    }
}
