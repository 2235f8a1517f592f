//! Parallel iteration over blocks (elementwise chunks or tensor rows), with the
//! in-place case handled once here: an input that is the output itself is read
//! from a copy of the block, so kernels only ever see non-aliasing slices.

use std::cell::Cell;

use rayon::prelude::*;

use std::borrow::Cow;

use super::alloc;
use crate::check::{Input, Output, Region};

/// Elements per task for elementwise work: large enough to amortise scheduling,
/// small enough that an in-place copy stays in L1/L2.
pub(crate) const CHUNK: usize = 16 * 1024;

/// Elements of consecutive rows a [`row_pairs`] task takes at least (so small
/// rows stream).
const ROWS_PER_TASK: usize = 64 * 1024;

/// f(x row, y row) for each row of `width` elements of `x` and `y`, in
/// parallel (half-precision rows that a kernel widens in registers).
pub fn row_pairs<A: Sync, B: Send>(x: &[A], y: &mut [B], width: usize, f: impl Fn(&[A], &mut [B]) + Sync + Send) {
    let width = width.max(1); // no rows when 0
    y.par_chunks_mut(width).zip(x.par_chunks(width)).with_min_len(ROWS_PER_TASK.div_ceil(width)).for_each(|(y, x)| f(x, y));
}

/// f(x rows, y rows) for groups of consecutive whole rows of `width`
/// elements (at least 4 rows, or [`ROWS_PER_TASK`] elements, a group), in
/// parallel: for kernels that overlap one row's work with the next one's.
pub fn row_groups<A: Sync, B: Send>(x: &[A], y: &mut [B], width: usize, f: impl Fn(&[A], &mut [B]) + Sync + Send) {
    let group = width.max(1) * ROWS_PER_TASK.div_ceil(width.max(1)).max(4);
    y.par_chunks_mut(group).zip(x.par_chunks(group)).for_each(|(y, x)| f(x, y));
}

/// Where an input's data comes from.
pub enum Src<'a> {
    Slice(&'a [f32]),
    /// The input is the output buffer (in-place call): streamed block by block.
    Output,
    /// A copy, taken because the input is the buffer of another output.
    Copy(Vec<f32>),
}

impl<'a> Src<'a> {
    /// The whole input, for a pass that reads it before `output` is written.
    pub fn values<'s>(&'s self, output: &'s [f32]) -> &'s [f32] {
        match self {
            Src::Slice(s) => s,
            Src::Copy(s) => s,
            Src::Output => output,
        }
    }

    /// The input of a kernel writing `output` (and `others`). Safety: as [`Input::slice`].
    pub unsafe fn of(input: &Input<'a, f32>, output: &Output<'_, f32>, others: &[Region]) -> Self {
        if output.is(input) {
            Src::Output
        } else {
            match unsafe { input.read(others) } {
                Cow::Borrowed(data) => Src::Slice(data),
                Cow::Owned(copy) => Src::Copy(copy),
            }
        }
    }
}

/// A raw pointer that may cross to worker threads: each task reads or writes
/// only its own part of the buffer behind it.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) *mut T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer (a method, so closures capture the wrapper, not the field).
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// A reused copy buffer for in-place blocks of at most CHUNK elements, so a
    /// thread keeps at most 64 KiB between calls; larger blocks (long rows) get a
    /// buffer of their own, given back when the block is done.
    static BLOCK_COPY: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Calls `f(copy, block)` with a copy of `block`'s old values (an in-place output).
fn with_copy<R>(block: &mut [f32], f: impl FnOnce(&[f32], &mut [f32]) -> R) -> R {
    if block.len() > CHUNK {
        let copy = alloc::copy(block);
        return f(&copy, block);
    }
    alloc::with_kept(&BLOCK_COPY, |copy| {
        copy.clear();
        copy.extend_from_slice(block);
        f(copy, block)
    })
}

/// Calls `f(block_index, inputs, output_block)` for every `block`-sized piece of
/// `out` in parallel and returns the results in block order.
pub fn blocks<const N: usize, R: Send>(
    srcs: [Src<'_>; N],
    out: &mut [f32],
    block: usize,
    f: impl Fn(usize, [&[f32]; N], &mut [f32]) -> R + Sync,
) -> Vec<R> {
    let block = block.max(1);
    let per_task = (CHUNK / block).max(1);
    out.par_chunks_mut(block)
        .with_min_len(per_task)
        .enumerate()
        .map(|(index, y)| {
            let range = index * block..index * block + y.len();
            let slice = |src: &Src, copy: &[f32]| -> *const [f32] {
                match src {
                    Src::Slice(s) => &s[range.clone()],
                    Src::Copy(s) => &s[range.clone()],
                    Src::Output => copy,
                }
            };
            if srcs.iter().any(|s| matches!(s, Src::Output)) {
                with_copy(y, |copy, y| {
                    // SAFETY: each pointer is a live slice (a caller input or the copy).
                    let xs = std::array::from_fn(|i| unsafe { &*slice(&srcs[i], copy) });
                    f(index, xs, y)
                })
            } else {
                let xs = std::array::from_fn(|i| unsafe { &*slice(&srcs[i], &[]) });
                f(index, xs, y)
            }
        })
        .collect()
}
