//! GEMM through cuBLAS (FP32 math; TF32 only with CUDANN_ALLOW_TF32=1), with the
//! row-major operands swapped rather than copied.

use std::cell::RefCell;
use std::sync::OnceLock;

use cudarc::cublas::sys::{self, cublasMath_t, cublasOperation_t, cublasStatus_t};

use super::driver::{DevPtr, Stream};
use crate::error::{Error, Result};

/// Whether libcublas can be loaded at all (checked once).
pub fn available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only asks the loader.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

fn check(status: cublasStatus_t, what: &str) -> Result<()> {
    match status {
        cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => Err(Error::OutOfMemory(format!("{what}: {status:?}"))),
        _ => Err(Error::LaunchFailed(format!("{what}: {status:?}"))),
    }
}

/// A cuBLAS handle per thread and context: handles are not safe to share
/// while streams change, and each belongs to the context it was created in.
struct Handle(sys::cublasHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate below and used by this thread only.
        unsafe { sys::cublasDestroy_v2(self.0) };
    }
}

thread_local! {
    static HANDLES: RefCell<Vec<(usize, Handle)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's handle for the current context (the GPU the
/// call runs on), created on first use.
fn with_handle<R>(f: impl FnOnce(sys::cublasHandle_t) -> Result<R>) -> Result<R> {
    let mut context = std::ptr::null_mut();
    // SAFETY: reads the thread's current context into an out-pointer.
    super::driver::check(unsafe { cudarc::driver::sys::cuCtxGetCurrent(&mut context) }, "cuCtxGetCurrent")?;
    let key = context as usize;
    HANDLES.with(|cell| {
        let mut handles = cell.borrow_mut();
        if !handles.iter().any(|(k, _)| *k == key) {
            let mut handle = std::ptr::null_mut();
            // SAFETY: plain creation into an out-pointer (in the current context).
            unsafe {
                check(sys::cublasCreate_v2(&mut handle), "cublasCreate")?;
                let mode = if super::allow_tf32() { cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH } else { cublasMath_t::CUBLAS_DEFAULT_MATH };
                check(sys::cublasSetMathMode(handle, mode), "cublasSetMathMode")?;
            }
            handles.push((key, Handle(handle)));
        }
        let handle = handles.iter().find(|(k, _)| *k == key).expect("created above").1.0;
        f(handle)
    })
}

/// Row-major C = alpha A·B + beta C over `batch` contiguous matrices, as the
/// column-major product Cᵀ = Bᵀ·Aᵀ (no copies). Safety: valid device pointers of
/// the implied sizes; every dimension fits in an i32 (the ABI's `int`).
pub unsafe fn sgemm(a: DevPtr, b: DevPtr, c: DevPtr, batch: usize, m: usize, n: usize, k: usize, alpha: f32, beta: f32, stream: Stream) -> Result<()> {
    with_handle(|h| unsafe {
        check(sys::cublasSetStream_v2(h, stream.cast()), "cublasSetStream")?;
        let (no, m_, n_, k_) = (cublasOperation_t::CUBLAS_OP_N, m as i32, n as i32, k as i32);
        if batch == 1 {
            // The plain call: its heuristics can pick better kernels than the batched one's.
            let (a, b, c) = (a as *const f32, b as *const f32, c as *mut f32);
            return check(sys::cublasSgemm_v2(h, no, no, n_, m_, k_, &alpha, b, n_, a, k_, &beta, c, n_), "cublasSgemm");
        }
        check(
            sys::cublasSgemmStridedBatched(
                h, no, no, n_, m_, k_,
                &alpha, b as *const f32, n_, (k * n) as i64,
                a as *const f32, k_, (m * k) as i64,
                &beta, c as *mut f32, n_, (m * n) as i64,
                batch as i32,
            ),
            "cublasSgemmStridedBatched",
        )
    })
}

/// One operand of [`sgemm_strided`]: device address, transposed or not,
/// elements between stored rows and between matrices.
#[derive(Clone, Copy)]
pub struct Operand {
    pub ptr: DevPtr,
    pub trans: bool,
    pub ld: usize,
    pub stride: usize,
}

/// Row-major `C_i = alpha op(A_i) op(B_i) + beta C_i` for general strides and
/// transposes (cudann_gemm_ex), as the column-major `C_iᵀ = op(B_i)ᵀ op(A_i)ᵀ`:
/// a row-major matrix is its transpose in column-major with the same leading
/// dimension, so each operand keeps its own transpose flag. `k >= 1`.
/// Safety: valid device pointers of the spans the strides imply.
pub unsafe fn sgemm_strided(a: Operand, b: Operand, c: Operand, batch: usize, m: usize, n: usize, k: usize, alpha: f32, beta: f32, stream: Stream) -> Result<()> {
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let fits = [m, n, k, a.ld, b.ld, c.ld].iter().all(|&v| v <= i32::MAX as usize);
    with_handle(|h| unsafe {
        check(sys::cublasSetStream_v2(h, stream.cast()), "cublasSetStream")?;
        let (pa, pb, pc) = (a.ptr as *const f32, b.ptr as *const f32, c.ptr as *mut f32);
        if batch == 1 && fits {
            let (m_, n_, k_) = (m as i32, n as i32, k as i32);
            return check(sys::cublasSgemm_v2(h, op(b.trans), op(a.trans), n_, m_, k_, &alpha, pb, b.ld as i32, pa, a.ld as i32, &beta, pc, c.ld as i32), "cublasSgemm");
        }
        check(
            sys::cublasSgemmStridedBatched_64(
                h, op(b.trans), op(a.trans), n as i64, m as i64, k as i64,
                &alpha, pb, b.ld as i64, b.stride as i64,
                pa, a.ld as i64, a.stride as i64,
                &beta, pc, c.ld as i64, c.stride as i64,
                batch as i64,
            ),
            "cublasSgemmStridedBatched_64",
        )
    })
}

/// [`sgemm_strided`] with half-precision A and B of one type (`CUDA_R_16F` or
/// `CUDA_R_16BF`) and C float32 or that type, accumulated in float32 on the
/// tensor cores (`cublasGemmStridedBatchedEx`). Safety: as [`sgemm_strided`].
pub unsafe fn gemm_half(a: Operand, b: Operand, c: Operand, [ab_type, c_type]: [sys::cudaDataType; 2], batch: usize, m: usize, n: usize, k: usize, alpha: f32, beta: f32, stream: Stream) -> Result<()> {
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    with_handle(|h| unsafe {
        check(sys::cublasSetStream_v2(h, stream.cast()), "cublasSetStream")?;
        let (alpha, beta) = (&alpha as *const f32 as *const std::ffi::c_void, &beta as *const f32 as *const std::ffi::c_void);
        check(
            sys::cublasGemmStridedBatchedEx_64(
                h, op(b.trans), op(a.trans), n as i64, m as i64, k as i64,
                alpha, b.ptr as *const std::ffi::c_void, ab_type, b.ld as i64, b.stride as i64,
                a.ptr as *const std::ffi::c_void, ab_type, a.ld as i64, a.stride as i64,
                beta, c.ptr as *mut std::ffi::c_void, c_type, c.ld as i64, c.stride as i64,
                batch as i64, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            ),
            "cublasGemmStridedBatchedEx_64",
        )
    })
}
