//! Half-precision tensors through the float32 GPU kernels: each half operand
//! is widened into a stream-ordered float32 temporary (`cuMemAllocAsync`,
//! released on the same stream, so graph capture works), the float32 launch
//! runs on the temporaries, and each half output is rounded back once. The
//! result is exactly the GPU's float32 op on the widened inputs, rounded once,
//! as the CPU path is the CPU's float32 op rounded once.

use super::driver::{DevPtr, Stream};
use super::scratch::Scratch;
use super::{Gpu, ops};
use crate::cpu::convert::Float;
use crate::error::Result;

/// How an operand of a widened call is used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A half tensor the op reads.
    In,
    /// A half tensor the op writes (not read, unless it is an input's buffer).
    Out,
    /// Passed as it is (float32 or integer operands: masks, tables, tokens).
    Keep,
}

/// Runs `f32_op` with every `In`/`Out` operand (`pointers[i]`, `elements[i]`
/// elements of type `t`) replaced by a float32 temporary; an output that is
/// an input's very buffer shares that input's temporary (in place stays in
/// place). Inputs come before outputs in `uses`. Safety: device pointers of
/// the given sizes.
pub unsafe fn run(g: &Gpu, stream: Stream, t: Float, uses: &[Use], pointers: &[DevPtr], elements: &[usize], f32_op: impl FnOnce(&[DevPtr]) -> Result<()>) -> Result<()> {
    debug_assert!(!uses.iter().skip_while(|&&u| u != Use::Out).any(|&u| u == Use::In), "inputs before outputs");
    let mut temps = Scratch::new(stream);
    let mut wide = pointers.to_vec();
    for i in 0..pointers.len() {
        if uses[i] == Use::Keep || elements[i] == 0 {
            continue;
        }
        if let Some(j) = (0..i).find(|&j| uses[j] != Use::Keep && pointers[j] == pointers[i]) {
            wide[i] = wide[j];
            continue;
        }
        wide[i] = temps.alloc(elements[i] * 4)?;
        if uses[i] == Use::In {
            unsafe { ops::convert(g, stream, pointers[i], t, wide[i], Float::F32, elements[i])? };
        }
    }
    f32_op(&wide)?;
    for i in 0..pointers.len() {
        let first_use = !(0..i).any(|j| uses[j] == Use::Out && pointers[j] == pointers[i]);
        if uses[i] == Use::Out && elements[i] > 0 && first_use {
            unsafe { ops::convert(g, stream, wide[i], Float::F32, pointers[i], t, elements[i])? };
        }
    }
    Ok(())
}
