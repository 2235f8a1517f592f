//! The GPU backend: each device's primary context (the one the CUDA runtime and
//! PyTorch use) with the embedded PTX loaded once, pointer classification,
//! staging pools, cuBLAS and the launches.

pub mod blas;
pub mod comm;
pub mod driver;
pub mod kernels;
pub mod memory;
pub mod ops;
pub mod scratch;
pub mod widen;

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::OnceLock;

use cudarc::driver::sys;

use crate::error::{Error, Result};
use driver::{Arg, Launch, Stream, check};

/// A loaded kernel (driver handles are process-wide and thread-safe).
#[derive(Clone, Copy)]
struct Kernel(sys::CUfunction);
// SAFETY: CUfunction handles may be used from any thread.
unsafe impl Send for Kernel {}
unsafe impl Sync for Kernel {}

/// One usable GPU: its primary context and every kernel, loaded once.
pub struct Gpu {
    /// The device ordinal (as `cudaSetDevice` numbers devices).
    pub ordinal: i32,
    context: sys::CUcontext,
    kernels: HashMap<&'static str, Kernel>,
    pub pools: memory::Pools,
    /// The most shared memory a block may opt in to, in bytes.
    pub shared_optin: usize,
    /// Streaming multiprocessors.
    pub sm_count: usize,
}
// SAFETY: the context handle is only passed to the driver, which is thread-safe.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

/// The driver, initialised once: how many devices, and each one probed lazily.
struct Driver {
    devices: Vec<OnceLock<std::result::Result<Gpu, String>>>,
}

/// The driver, or NotAvailable with the reason (no libcuda, no device).
fn driver() -> Result<&'static Driver> {
    static DRIVER: OnceLock<std::result::Result<Driver, String>> = OnceLock::new();
    DRIVER.get_or_init(|| init().map_err(|e| e.to_string())).as_ref().map_err(|why| Error::NotAvailable(why.clone()))
}

fn init() -> Result<Driver> {
    // SAFETY: only asks the loader whether libcuda exists.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::NotAvailable("no CUDA driver (libcuda) on this machine".to_string()));
    }
    let mut count = 0;
    // SAFETY: plain driver calls with valid out-pointers.
    unsafe {
        check(sys::cuInit(0), "cuInit")?;
        check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")?;
    }
    if count < 1 {
        return Err(Error::NotAvailable("the CUDA driver reports no GPU".to_string()));
    }
    Ok(Driver { devices: (0..count).map(|_| OnceLock::new()).collect() })
}

/// How many GPUs the driver reports (NotAvailable when there is no driver).
pub fn count() -> Result<i32> {
    Ok(driver()?.devices.len() as i32)
}

/// GPU `ordinal`, probed once (lazily, thread-safely); -2 for an ordinal the
/// driver does not have, NotAvailable with the reason when it is unusable.
pub fn device(ordinal: i32) -> Result<&'static Gpu> {
    let devices = &driver()?.devices;
    let slot = usize::try_from(ordinal)
        .ok()
        .and_then(|i| devices.get(i))
        .ok_or_else(|| Error::InvalidValue(format!("device {ordinal} does not exist ({} GPU(s): 0..{})", devices.len(), devices.len())))?;
    slot.get_or_init(|| probe(ordinal).map_err(|e| e.to_string())).as_ref().map_err(|why| Error::NotAvailable(why.clone()))
}

/// The calling thread's current device, as the CUDA runtime sees it: the device
/// of the thread's current context, or device 0 when it has none.
pub fn current_ordinal() -> Result<i32> {
    driver()?;
    let mut context = std::ptr::null_mut();
    let mut ordinal = 0;
    // SAFETY: reads the thread's current context and its device.
    unsafe {
        check(sys::cuCtxGetCurrent(&mut context), "cuCtxGetCurrent")?;
        if !context.is_null() {
            check(sys::cuCtxGetDevice(&mut ordinal), "cuCtxGetDevice")?;
        }
    }
    Ok(ordinal)
}

/// The calling thread's current GPU; a thread with no current context gets
/// device 0's made current (as the CUDA runtime does on first use).
pub fn get() -> Result<&'static Gpu> {
    let gpu = device(current_ordinal()?)?;
    gpu.make_current()?;
    Ok(gpu)
}

/// Whether the caller allowed TF32 tensor-core math (CUDANN_ALLOW_TF32=1, read
/// once): GEMM through cuBLAS's TF32 mode, the TF32 attention kernels.
pub fn allow_tf32() -> bool {
    static TF32: OnceLock<bool> = OnceLock::new();
    *TF32.get_or_init(|| std::env::var("CUDANN_ALLOW_TF32").is_ok_and(|v| v.trim() == "1"))
}

fn probe(ordinal: i32) -> Result<Gpu> {
    let mut device = 0;
    let mut context = std::ptr::null_mut();
    // SAFETY: plain driver calls with valid out-pointers; the primary context
    // stays retained for the life of the process.
    unsafe {
        check(sys::cuDeviceGet(&mut device, ordinal), "cuDeviceGet")?;
        check(sys::cuDevicePrimaryCtxRetain(&mut context, device), "cuDevicePrimaryCtxRetain")?;
    }
    scratch::keep_freed_memory(device);
    let gpu = Gpu { ordinal, context, kernels: HashMap::new(), pools: memory::Pools::default(), shared_optin: 0, sm_count: 0 };
    let _current = gpu.enter()?;
    let capability = attribute(ordinal, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? * 10
        + attribute(ordinal, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let mut kernels = HashMap::new();
    // Modules for newer GPUs than this one are skipped: their kernels are absent.
    for (module_name, ptx, names, _) in kernels::MODULES.iter().filter(|m| m.3 <= capability as u32) {
        let source = CString::new(*ptx).map_err(|_| Error::Internal(format!("{module_name}.ptx holds a NUL")))?;
        let mut module = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image, loaded into the current (primary)
        // context; the module lives as long as the process.
        unsafe { check(sys::cuModuleLoadData(&mut module, source.as_ptr().cast()), &format!("loading {module_name}.ptx"))? };
        for name in *names {
            let mut function = std::ptr::null_mut();
            let c_name = CString::new(*name).expect("kernel names have no NUL");
            unsafe { check(sys::cuModuleGetFunction(&mut function, module, c_name.as_ptr()), &format!("finding {name}"))? };
            kernels.insert(*name, Kernel(function));
        }
    }
    let shared_optin = attribute(ordinal, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
    let sm_count = attribute(ordinal, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
    drop(_current);
    Ok(Gpu { kernels, shared_optin, sm_count, ..gpu })
}

/// One attribute of device `ordinal`.
fn attribute(ordinal: i32, which: sys::CUdevice_attribute) -> Result<i32> {
    let mut value = 0;
    // SAFETY: a plain query into an out-pointer.
    unsafe { check(sys::cuDeviceGetAttribute(&mut value, which, ordinal), "cuDeviceGetAttribute")? };
    Ok(value)
}

/// "NVIDIA H200, driver 13.0, sm_90" for device `ordinal`.
pub fn describe(ordinal: i32) -> Result<String> {
    let mut name = [0 as std::ffi::c_char; 256];
    let mut version = 0;
    // SAFETY: out-buffers of the sizes passed.
    unsafe {
        check(sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, ordinal), "cuDeviceGetName")?;
        check(sys::cuDriverGetVersion(&mut version), "cuDriverGetVersion")?;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    let major = attribute(ordinal, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(ordinal, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok(format!("{name}, driver {}.{}, sm_{major}{minor}", version / 1000, version % 1000 / 10))
}

/// While alive, a GPU's context is current on this thread; the thread's
/// previous context (if it had another) is restored on drop, so a caller's
/// `cudaSetDevice` choice survives calls on another device's pointers.
pub struct Entered {
    previous: sys::CUcontext,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if !self.previous.is_null() {
            // SAFETY: a context that was current on this thread a moment ago.
            unsafe { sys::cuCtxSetCurrent(self.previous) };
        }
    }
}

impl Gpu {
    /// Gives a thread with no current context (a new Go or Ruby thread) this
    /// one for good, as the CUDA runtime does on first use.
    fn make_current(&self) -> Result<()> {
        let mut current = std::ptr::null_mut();
        // SAFETY: as in `enter`.
        unsafe {
            check(sys::cuCtxGetCurrent(&mut current), "cuCtxGetCurrent")?;
            if current.is_null() {
                check(sys::cuCtxSetCurrent(self.context), "cuCtxSetCurrent")?;
            }
        }
        Ok(())
    }

    /// Makes this context the thread's current one for good (`cudaSetDevice`).
    pub fn select(&self) -> Result<()> {
        // SAFETY: a context retained for the life of the process.
        check(unsafe { sys::cuCtxSetCurrent(self.context) }, "cuCtxSetCurrent")
    }

    /// Makes this context current until the guard drops (see [`Entered`]).
    pub fn enter(&self) -> Result<Entered> {
        let mut current = std::ptr::null_mut();
        // SAFETY: reads the thread's current context; sets a context retained
        // for the life of the process.
        unsafe {
            check(sys::cuCtxGetCurrent(&mut current), "cuCtxGetCurrent")?;
            if current == self.context {
                return Ok(Entered { previous: std::ptr::null_mut() });
            }
            check(sys::cuCtxSetCurrent(self.context), "cuCtxSetCurrent")?;
        }
        Ok(Entered { previous: current })
    }

    /// Whether kernel `name` was loaded (modules for newer GPUs are not).
    pub fn has(&self, name: &str) -> bool {
        self.kernels.contains_key(name)
    }

    /// Enqueues kernel `name` on `stream`. Safety: `args` match its parameters
    /// and point at device memory of the sizes they imply.
    pub unsafe fn launch(&self, name: &'static str, at: Launch, stream: Stream, args: &mut [Arg]) -> Result<()> {
        let kernel = self.kernels.get(name).ok_or_else(|| Error::Internal(format!("kernel {name} is not loaded")))?;
        unsafe { driver::launch(kernel.0, name, at, stream, args) }
    }
}
