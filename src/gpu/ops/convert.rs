//! Conversion launches among float32, float16 and bfloat16.

use super::strided;
use crate::cpu::convert::Float;
use crate::error::Result;
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::{Gpu, memory};

use Arg::{I32, I64, Ptr};

/// The ABI's code of a type (`CUDANN_F32`, `CUDANN_F16`, `CUDANN_BF16`), as the kernel takes it.
fn code(t: Float) -> i32 {
    match t {
        Float::F32 => 0,
        Float::F16 => 1,
        Float::Bf16 => 2,
    }
}

/// `n` elements of `src` (type `from`) into `dst` (type `to`); the same type
/// is a device copy (nothing when `dst == src`). Safety: device memory of
/// `n` elements each, not overlapping unless the very same buffer.
pub unsafe fn convert(g: &Gpu, s: Stream, src: DevPtr, from: Float, dst: DevPtr, to: Float, n: usize) -> Result<()> {
    if from == to {
        let bytes = n * if from == Float::F32 { 4 } else { 2 };
        return if src == dst { Ok(()) } else { unsafe { memory::copy(dst as usize, src as usize, bytes, s) } };
    }
    let args = &mut [Ptr(src), I32(code(from)), Ptr(dst), I32(code(to)), I64(n as i64)];
    unsafe { g.launch("convert", strided(n), s, args) }
}
