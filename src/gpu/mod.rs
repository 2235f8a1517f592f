//! The GPU backend: one context (device 0's primary context), the embedded PTX
//! loaded once, pointer classification, staging pools, cuBLAS and the launches.

pub mod blas;
pub mod driver;
pub mod kernels;
pub mod memory;
pub mod ops;

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

/// The usable GPU: its context and every kernel, loaded once.
pub struct Gpu {
    context: sys::CUcontext,
    kernels: HashMap<&'static str, Kernel>,
    pub pools: memory::Pools,
}
// SAFETY: the context handle is only passed to the driver, which is thread-safe.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

/// The GPU, probed once (lazily, thread-safely); NotAvailable with the reason
/// when there is none (no driver, no device, PTX the driver cannot load).
pub fn get() -> Result<&'static Gpu> {
    static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| probe().map_err(|e| e.to_string())).as_ref().map_err(|why| Error::NotAvailable(why.clone()))?;
    gpu.make_current()?;
    Ok(gpu)
}

/// Whether the caller allowed TF32 tensor-core math (CUDANN_ALLOW_TF32=1, read
/// once): GEMM through cuBLAS's TF32 mode, flash attention's TF32 kernel.
pub fn allow_tf32() -> bool {
    static TF32: OnceLock<bool> = OnceLock::new();
    *TF32.get_or_init(|| std::env::var("CUDANN_ALLOW_TF32").is_ok_and(|v| v.trim() == "1"))
}

fn probe() -> Result<Gpu> {
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
    let mut device = 0;
    let mut context = std::ptr::null_mut();
    unsafe {
        check(sys::cuDeviceGet(&mut device, 0), "cuDeviceGet")?;
        check(sys::cuDevicePrimaryCtxRetain(&mut context, device), "cuDevicePrimaryCtxRetain")?;
        check(sys::cuCtxSetCurrent(context), "cuCtxSetCurrent")?;
    }
    let (mut major, mut minor) = (0, 0);
    unsafe {
        use sys::CUdevice_attribute::{CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR};
        check(sys::cuDeviceGetAttribute(&mut major, MAJOR, device), "cuDeviceGetAttribute")?;
        check(sys::cuDeviceGetAttribute(&mut minor, MINOR, device), "cuDeviceGetAttribute")?;
    }
    let capability = (major * 10 + minor) as u32;
    let mut kernels = HashMap::new();
    // Modules for newer GPUs than this one are skipped: their kernels are absent.
    for (module_name, ptx, names, _) in kernels::MODULES.iter().filter(|m| m.3 <= capability) {
        let source = CString::new(*ptx).map_err(|_| Error::Internal(format!("{module_name}.ptx holds a NUL")))?;
        let mut module = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image; the module lives as long as the process.
        unsafe { check(sys::cuModuleLoadData(&mut module, source.as_ptr().cast()), &format!("loading {module_name}.ptx"))? };
        for name in *names {
            let mut function = std::ptr::null_mut();
            let c_name = CString::new(*name).expect("kernel names have no NUL");
            unsafe { check(sys::cuModuleGetFunction(&mut function, module, c_name.as_ptr()), &format!("finding {name}"))? };
            kernels.insert(*name, Kernel(function));
        }
    }
    Ok(Gpu { context, kernels, pools: memory::Pools::default() })
}

impl Gpu {
    /// Makes this context current on the calling thread (callers' threads may
    /// have none, or another).
    fn make_current(&self) -> Result<()> {
        let mut current = std::ptr::null_mut();
        // SAFETY: reads the thread's current context; sets a context retained
        // for the life of the process.
        unsafe {
            check(sys::cuCtxGetCurrent(&mut current), "cuCtxGetCurrent")?;
            if current != self.context {
                check(sys::cuCtxSetCurrent(self.context), "cuCtxSetCurrent")?;
            }
        }
        Ok(())
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
