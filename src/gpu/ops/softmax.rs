//! Softmax launches.

use super::per_row;
use crate::gpu::driver::{Arg, DevPtr, Launch, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{I32, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

pub unsafe fn softmax(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, rows: usize, cols: usize) -> Result<()> {
    unsafe { g.launch("softmax_f32", per_row(rows, 1024), s, &mut [Ptr(x), Ptr(y), I32(rows as i32), I32(cols as i32)]) }
}

pub unsafe fn softmax_topk(g: &Gpu, s: Stream, x: DevPtr, w: DevPtr, idx: DevPtr, rows: usize, cols: usize, k: usize) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(w), Ptr(idx), I32(rows as i32), I32(cols as i32), I32(k as i32)];
    unsafe { g.launch("softmax_topk_f32", per_row(rows, 32), s, args) }
}

/// Columns above which softmax backward keeps the row of y in shared memory:
/// two blocks an SM of shorter rows (y and dy: 64 KB) fit in L2 together.
const CACHED_COLS: usize = 8192;
/// The widest row softmax_backward_regs_f32 takes (1024 threads x SR_ITEMS).
const REGISTER_COLS: usize = 32768;

/// `dx = y (dy - Σ dy y)` row by row.
pub unsafe fn softmax_backward(g: &Gpu, s: Stream, dy: DevPtr, y: DevPtr, dx: DevPtr, rows: usize, cols: usize) -> Result<()> {
    let args = &mut [Ptr(dy), Ptr(y), Ptr(dx), I32(rows as i32), I32(cols as i32)];
    let row_bytes = cols * std::mem::size_of::<f32>();
    if cols > CACHED_COLS && row_bytes <= g.shared_optin {
        // One block an SM: its 1024 threads' registers take most of it. Rows
        // its registers can hold keep dy there too (read once, not twice).
        let at = Launch { shared: row_bytes as u32, ..per_row(rows.min(g.sm_count), 1024) };
        let kernel = if cols <= REGISTER_COLS { "softmax_backward_regs_f32" } else { "softmax_backward_cached_f32" };
        return unsafe { g.launch(kernel, at, s, args) };
    }
    unsafe { g.launch("softmax_backward_f32", per_row(rows, 1024), s, args) }
}
