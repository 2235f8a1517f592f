//! GEMM: cuBLAS, or the tiled kernel where cuBLAS is absent.

use super::{scale, zero};
use crate::gpu::driver::{Arg, DevPtr, Launch, Stream};
use crate::gpu::{Gpu, blas};
use crate::cpu::convert::Float;
use crate::error::Result;
use cudarc::cublas::sys::cudaDataType;

use Arg::{F32, I32, I64, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

pub unsafe fn sgemm(g: &Gpu, s: Stream, a: DevPtr, b: DevPtr, c: DevPtr, batch: usize, m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> Result<()> {
    if k == 0 || alpha == 0.0 {
        // No product term (cuBLAS rejects K = 0): C = beta C, never read when beta == 0.
        let len = batch * m * n;
        return if beta == 0.0 { unsafe { zero(s, c, len) } } else { unsafe { scale(g, s, c, c, beta, len) } };
    }
    if blas::available() {
        return unsafe { blas::sgemm(a, b, c, batch, m, n, k, alpha, beta, s) };
    }
    // The fallback kernel: 64x64 tiles, batch in grid.z (at most 65535 per launch).
    let (sa, sb, sc) = (m * k, k * n, m * n);
    for first in (0..batch).step_by(65535) {
        let count = (batch - first).min(65535);
        let at = Launch { grid: (n.div_ceil(64) as u32, m.div_ceil(64).min(65535) as u32, count as u32), block: (16, 16, 1), shared: 0 };
        let (a, b, c) = (a + (first * sa * 4) as DevPtr, b + (first * sb * 4) as DevPtr, c + (first * sc * 4) as DevPtr);
        let args = &mut [Ptr(a), Ptr(b), Ptr(c), I32(m as i32), I32(n as i32), I32(k as i32), F32(alpha), F32(beta), I64(sa as i64), I64(sb as i64), I64(sc as i64)];
        unsafe { g.launch("sgemm_tiled_f32", at, s, args)? };
    }
    Ok(())
}

/// cudann_gemm_ex through cuBLAS (the tiled fallback kernel only knows
/// contiguous untransposed operands): float32, or the half types of
/// [`half_types`] (`half`). Without a product term (`k == 0`) cuBLAS still
/// scales C by beta: it gets `alpha = 0` and `k = 1`, and BLAS reads neither A
/// nor B when alpha is 0.
pub unsafe fn gemm_ex(s: Stream, a: blas::Operand, b: blas::Operand, c: blas::Operand, half: Option<[cudaDataType; 2]>, batch: usize, m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> Result<()> {
    if !blas::available() {
        return Err(crate::error::Error::NotAvailable("cudann_gemm_ex on the GPU needs cuBLAS (libcublas), which is not installed".to_string()));
    }
    let (k, alpha) = if k == 0 { (1, 0.0) } else { (k, alpha) };
    match half {
        None => unsafe { blas::sgemm_strided(a, b, c, batch, m, n, k, alpha, beta, s) },
        Some(types) => unsafe { blas::gemm_half(a, b, c, types, batch, m, n, k, alpha, beta, s) },
    }
}

/// cudann_gemm_grouped on float32 device operands: one launch of the grouped
/// kernel, which reads the group offsets (`offsets`, device memory) itself.
/// Tiles of 128 x 128: rows grouped, at most one partial tile per group beyond
/// ceil(m / 128); the k dimension grouped, every group's whole C.
pub unsafe fn gemm_grouped(g: &Gpu, s: Stream, a: blas::Operand, b: blas::Operand, c: blas::Operand, offsets: DevPtr, groups: usize, inner: bool, m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> Result<()> {
    let tiles_m = m.div_ceil(128);
    let tiles = if inner { groups * tiles_m } else { tiles_m + groups };
    let at = Launch { grid: (n.div_ceil(128) as u32, tiles.min(65535) as u32, 1), block: (256, 1, 1), shared: 0 };
    let args = &mut [
        Ptr(a.ptr), Ptr(b.ptr), Ptr(c.ptr), Ptr(offsets), I32(groups as i32), I32(inner as i32), I32(m as i32), I32(n as i32), I32(k as i32),
        I32(a.trans as i32), I32(b.trans as i32), I64(a.ld as i64), I64(b.ld as i64), I64(c.ld as i64),
        I64(a.stride as i64), I64(b.stride as i64), I64(c.stride as i64), F32(alpha), F32(beta),
    ];
    unsafe { g.launch("gemm_grouped_f32", at, s, args) }
}

/// The cuBLAS data types of a half-precision `cudann_gemm_ex` the GPU takes:
/// A and B of one half type, C float32 or that type (None otherwise: such
/// calls run on the CPU, device pointers -1).
pub fn half_types([a, b, c]: [Float; 3]) -> Option<[cudaDataType; 2]> {
    let ab = match a {
        Float::F16 => cudaDataType::CUDA_R_16F,
        Float::Bf16 => cudaDataType::CUDA_R_16BF,
        Float::F32 => return None,
    };
    (a == b && (c == a || c == Float::F32)).then_some([ab, if c == a { ab } else { cudaDataType::CUDA_R_32F }])
}

