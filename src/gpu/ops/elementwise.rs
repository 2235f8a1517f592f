//! Elementwise launches: SiLU, add, mul, scale.

use super::strided;
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{F32, I64, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

pub unsafe fn silu(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("silu_f32", strided(n), s, &mut [Ptr(x), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn add(g: &Gpu, s: Stream, a: DevPtr, b: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("add_f32", strided(n), s, &mut [Ptr(a), Ptr(b), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn mul(g: &Gpu, s: Stream, a: DevPtr, b: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("mul_f32", strided(n), s, &mut [Ptr(a), Ptr(b), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn scale(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, factor: f32, n: usize) -> Result<()> {
    unsafe { g.launch("scale_f32", strided(n), s, &mut [Ptr(x), Ptr(y), F32(factor), I64(n as i64)]) }
}
