//! Conversion among float32, float16 and bfloat16.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output};
use crate::cpu::convert::{self, with_type};
use crate::dispatch::{self, Call};
use crate::gpu::ops;

/// Converts `n` elements of `src` (type `src_type`) into `dst` (type
/// `dst_type`), each `CUDANN_F32`, `CUDANN_F16` or `CUDANN_BF16`. To a half
/// type: round to nearest even, overflow to infinity, subnormals exact, signed
/// zeros and infinities kept; NaN stays a quiet NaN with its sign, in every
/// direction. Half to float32 is exact. The same type copies (`dst == src`
/// with the same type does nothing). On the GPU, bit for bit the CPU's. Returns -2 for an unknown type, NULL with
/// `n > 0`, `n < 0`, a pointer not aligned to its type, or overlapping buffers
/// (other than that same-type in-place call).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_convert(src: *const c_void, src_type: c_int, dst: *mut c_void, dst_type: c_int, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_convert", {
        let (from, to) = (check::float_type("src_type", src_type)?, check::float_type("dst_type", dst_type)?);
        let n = check::count("n", n)?;
        with_type!(from, S => with_type!(to, D => {
            let x = Input::new("src", src.cast::<S>(), n)?;
            let y = Output::new("dst", dst.cast::<D>(), n)?;
            let call = Call::new(stream, n, [x.region(), y.region()])?;
            let cpu = || unsafe {
                // The same buffer can only be the same type (else the sizes differ).
                if y.is(&x) {
                } else if from == to {
                    // The same type: the bits as they are (signalling NaNs too).
                    std::ptr::copy_nonoverlapping(x.ptr.cast::<u8>(), y.ptr.cast::<u8>(), n * size_of::<S>());
                } else {
                    convert::convert(x.slice(), y.slice());
                }
            };
            dispatch::run(&call, cpu, |g, p| unsafe { ops::convert(g, stream.cast(), p[0], from, p[1], to, n) })
        }))
    })
}
