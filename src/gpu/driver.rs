//! Checked calls into the CUDA driver (loaded at run time by cudarc).

use std::ffi::{CStr, c_void};

use cudarc::driver::sys::{self, CUresult};

use crate::error::{Error, Result};

/// A device address as the driver sees it.
pub type DevPtr = sys::CUdeviceptr;
/// A caller's stream (NULL = the default stream).
pub type Stream = sys::CUstream;

fn describe(result: CUresult) -> String {
    let mut text: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: the driver returns a static string or leaves the pointer NULL.
    unsafe { sys::cuGetErrorString(result, &mut text) };
    if text.is_null() { format!("{result:?}") } else { unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned() }
}

/// Maps a driver result to the library's error: out-of-memory is -4, every
/// other failure -3.
pub fn check(result: CUresult, what: &str) -> Result<()> {
    match result {
        CUresult::CUDA_SUCCESS => Ok(()),
        CUresult::CUDA_ERROR_OUT_OF_MEMORY => Err(Error::OutOfMemory(format!("{what}: {}", describe(result)))),
        _ => Err(Error::LaunchFailed(format!("{what}: {}", describe(result)))),
    }
}

/// Sets `words` 32-bit words at `ptr` to `value`, in `stream`'s order.
/// Safety: `ptr` holds `words` words of device memory.
pub unsafe fn fill32(stream: Stream, ptr: DevPtr, words: usize, value: u32) -> Result<()> {
    check(unsafe { sys::cuMemsetD32Async(ptr, value, words, stream) }, "cuMemsetD32Async")
}

/// Whether `stream` may wait for the host here: false while it (or, for the
/// legacy default stream, another stream it would join) is being captured
/// into a graph, or when the driver cannot tell. Safety: `stream` is a live
/// stream of the current context (or NULL).
pub unsafe fn may_sync(stream: Stream) -> bool {
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    let result = unsafe { sys::cuStreamIsCapturing(stream, &mut status) };
    result == CUresult::CUDA_SUCCESS && status == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
}

/// `n` int32 of device memory at `ptr`, read after the work before them on
/// `stream` (which this waits for). Safety: `ptr` holds `n` int32.
pub unsafe fn read_i32s(stream: Stream, ptr: DevPtr, n: usize) -> Result<Vec<i32>> {
    let mut host = vec![0i32; n];
    unsafe {
        check(sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr().cast(), ptr, n * 4, stream), "cuMemcpyDtoHAsync")?;
        check(sys::cuStreamSynchronize(stream), "cuStreamSynchronize")?;
    }
    Ok(host)
}

/// One kernel argument, passed by address to cuLaunchKernel.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(DevPtr),
    F32(f32),
    I32(i32),
    I64(i64),
}

impl Arg {
    fn address(&mut self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *mut DevPtr as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::I64(v) => v as *mut i64 as *mut c_void,
        }
    }
}

/// Launch geometry; `shared`: bytes of dynamic shared memory.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared: u32,
}

/// Dynamic shared memory a kernel gets without opting in.
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

/// Enqueues `function` on `stream`. Safety: `args` match the kernel's parameters
/// and every pointer in them is valid device memory of the sizes it implies.
pub unsafe fn launch(function: sys::CUfunction, name: &str, at: Launch, stream: Stream, args: &mut [Arg]) -> Result<()> {
    const MAX_ARGS: usize = 24;
    if args.len() > MAX_ARGS {
        return Err(crate::error::Error::Internal(format!("{name}: more than {MAX_ARGS} kernel arguments")));
    }
    let mut addresses = [std::ptr::null_mut(); MAX_ARGS];
    for (address, arg) in addresses.iter_mut().zip(args.iter_mut()) {
        *address = arg.address();
    }
    let ((gx, gy, gz), (bx, by, bz)) = (at.grid, at.block);
    if at.shared > DEFAULT_SHARED_LIMIT {
        let which = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: a loaded function; the launch fails cleanly if the device has less.
        check(unsafe { sys::cuFuncSetAttribute(function, which, at.shared as i32) }, name)?;
    }
    // SAFETY: per the caller's contract; `addresses` outlives the call.
    let result = unsafe { sys::cuLaunchKernel(function, gx, gy, gz, bx, by, bz, at.shared, stream, addresses.as_mut_ptr(), std::ptr::null_mut()) };
    check(result, name)
}
