//! GEMM.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output};
use crate::cpu::gemm;
use crate::dispatch::{self, Call};
use crate::gpu::ops;

/// Row-major `C[M,N] = alpha * A[M,K] * B[K,N] + beta * C`. With `beta == 0`,
/// `C` is not read (it may hold NaN). `C` may be `A`'s or `B`'s very buffer.
/// Returns -2 for NULL pointers with a non-empty shape, negative or overflowing
/// dimensions, or overlaps.
#[unsafe(no_mangle)]
#[allow(non_snake_case)] // the ABI names the matrices A, B, C and their sizes M, N, K
pub unsafe extern "C" fn cuda_gemm(
    A: *const f32,
    B: *const f32,
    C: *mut f32,
    M: c_int,
    N: c_int,
    K: c_int,
    alpha: f32,
    beta: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_gemm", {
        unsafe { batched(A, B, C, 1, M, N, K, alpha, beta, stream) }
    })
}

/// `batch` independent row-major GEMMs as `cuda_gemm`, over contiguous matrices
/// with strides `M*K` (A), `K*N` (B) and `M*N` (C). Returns -2 as `cuda_gemm`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuda_gemm_batched(
    A: *const f32,
    B: *const f32,
    C: *mut f32,
    batch: c_int,
    M: c_int,
    N: c_int,
    K: c_int,
    alpha: f32,
    beta: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_gemm_batched", {
        unsafe { batched(A, B, C, batch, M, N, K, alpha, beta, stream) }
    })
}

/// The shared body of both GEMM entry points.
#[allow(non_snake_case)]
unsafe fn batched(
    A: *const f32,
    B: *const f32,
    C: *mut f32,
    batch: c_int,
    M: c_int,
    N: c_int,
    K: c_int,
    alpha: f32,
    beta: f32,
    stream: *mut c_void,
) -> crate::error::Result<()> {
    let batch = check::dim("batch", batch)?;
    let (m, n, k) = (check::dim("M", M)?, check::dim("N", N)?, check::dim("K", K)?);
    let c_len = check::elements(&[("batch", batch), ("M", m), ("N", n)])?;
    let (a_len, b_len) = if c_len == 0 {
        (0, 0) // nothing to compute: A and B are not read
    } else {
        (check::elements(&[("batch", batch), ("M", m), ("K", k)])?, check::elements(&[("batch", batch), ("K", k), ("N", n)])?)
    };
    let a = Input::new("A", A, a_len)?;
    let b = Input::new("B", B, b_len)?;
    let c = Output::new("C", C, c_len)?;
    let flops = 2.0 * c_len as f64 * k as f64;
    let call = Call::new(stream, c_len, [a.region(), b.region(), c.region()])?.flops(flops).kernels_in_place(false);
    dispatch::run(
        &call,
        || unsafe { gemm::sgemm_batched(&a.read(&[c.region()]), &b.read(&[c.region()]), c.slice(), m, n, k, alpha, beta) },
        |g, p| unsafe { ops::sgemm(g, stream.cast(), p[0], p[1], p[2], batch, m, n, k, alpha, beta) },
    )
}
