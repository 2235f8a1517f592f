//! Elementwise launches: SiLU, add, mul, scale; the training activations, bias
//! add and the bias gradient (column sums, shared with the norms' backwards).

use super::strided;
use crate::gpu::driver::{Arg, DevPtr, Launch, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{F32, I32, I64, Ptr};

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

/// `d_input = d_output * f'(input)` for an activation with a backward kernel
/// (`silu_backward_f32`, `gelu_backward_f32`).
pub unsafe fn activation_backward(g: &Gpu, s: Stream, kernel: &'static str, dy: DevPtr, x: DevPtr, dx: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch(kernel, strided(n), s, &mut [Ptr(dy), Ptr(x), Ptr(dx), I64(n as i64)]) }
}

pub unsafe fn gelu(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("gelu_f32", strided(n), s, &mut [Ptr(x), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn swiglu(g: &Gpu, s: Stream, gate: DevPtr, up: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("swiglu_f32", strided(n), s, &mut [Ptr(gate), Ptr(up), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn swiglu_backward(g: &Gpu, s: Stream, dy: DevPtr, gate: DevPtr, up: DevPtr, d_gate: DevPtr, d_up: DevPtr, n: usize) -> Result<()> {
    let args = &mut [Ptr(dy), Ptr(gate), Ptr(up), Ptr(d_gate), Ptr(d_up), I64(n as i64)];
    unsafe { g.launch("swiglu_backward_f32", strided(n), s, args) }
}

pub unsafe fn bias_add(g: &Gpu, s: Stream, x: DevPtr, bias: DevPtr, y: DevPtr, rows: usize, cols: usize) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(bias), Ptr(y), I32(rows as i32), I32(cols as i32)];
    unsafe { g.launch("bias_add_f32", strided(rows * cols), s, args) }
}

/// `out[c] = Σ_r a[r, c] · b[r, c]` (`b` 0: `Σ_r a[r, c]`): one block of (32, 32)
/// threads per strip of 32 columns, deterministic, no scratch.
pub unsafe fn column_sums(g: &Gpu, s: Stream, a: DevPtr, b: DevPtr, out: DevPtr, rows: usize, cols: usize) -> Result<()> {
    let at = Launch { grid: (cols.div_ceil(32).clamp(1, 65535) as u32, 1, 1), block: (32, 32, 1), shared: 0 };
    unsafe { g.launch("column_sums_f32", at, s, &mut [Ptr(a), Ptr(b), Ptr(out), I32(rows as i32), I32(cols as i32)]) }
}
