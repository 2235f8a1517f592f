//! Row-major SGEMM through the `gemm` crate (packed, SIMD, rayon-parallel).
//! The crate takes a row and a column stride for every matrix, so transposed
//! operands and leading dimensions are views, not copies, except a B stored
//! along k under many rows of A and of some depth, which is copied to rows
//! (`transpose.rs`: the crate packs it more slowly than the copy costs).
//! Products with up to 32 rows of op(A) go to kernels of our own first
//! (`skinny.rs` for B stored along k, `skinny_nn.rs` along n), which read B
//! once at the memory's rate.

use gemm::Parallelism;

use super::alloc::with_scratch;
use super::transpose::transpose;
use super::{skinny, skinny_nn};
use rayon::prelude::*;

/// Products with at most this many rows of A are bound by streaming B; those
/// past the few-row kernels (`skinny`, `skinny_nn`: up to 32 rows) run as
/// independent column bands (one single-threaded crate call each), which
/// beats the crate's own threading there.
const FEW_ROWS: usize = 64;
/// Columns per band: fixed, so results do not depend on the thread count.
const BAND: usize = 1024;

/// A matrix in memory: element (i, j) at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct View<T> {
    pub ptr: T,
    pub rs: usize,
    pub cs: usize,
}

impl<T: Copy> View<T> {
    /// A row-major matrix with `ld` elements between rows, read as itself or
    /// as its transpose.
    pub fn new(ptr: T, ld: usize, transposed: bool) -> Self {
        if transposed { View { ptr, rs: 1, cs: ld } } else { View { ptr, rs: ld, cs: 1 } }
    }
}

/// The element offset of column `j`, for a band of columns.
fn column<T>(view: View<*const T>, j: usize) -> View<*const T> {
    View { ptr: view.ptr.wrapping_add(j * view.cs), ..view }
}

/// C = alpha * op(A) * op(B) + beta * C for one `m x n` product of depth `k`;
/// with beta == 0, C is never read.
///
/// SAFETY: every view covers its matrix (`m x k`, `k x n`, `m x n`); C does not
/// overlap A or B.
pub unsafe fn sgemm_view(a: View<*const f32>, b: View<*const f32>, c: View<*mut f32>, m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 && alpha != 0.0 && unsafe { skinny::sgemm(a, b, c, m, n, k, alpha, beta) || skinny_nn::sgemm(a, b, c, m, n, k, alpha, beta) } {
        return;
    }
    if k == 0 || alpha == 0.0 {
        // No product term: C = beta * C (and C = 0 without reading it when beta == 0).
        for i in 0..m {
            for j in 0..n {
                let c = c.ptr.wrapping_add(i * c.rs + j * c.cs);
                unsafe { *c = if beta == 0.0 { 0.0 } else { beta * *c } };
            }
        }
    } else if m <= FEW_ROWS && n > BAND {
        // Column bands of C are disjoint; the address travels as usize to be Send.
        let c_addr = c.ptr as usize;
        let b_addr = b.ptr as usize;
        let a_addr = a.ptr as usize;
        (0..n.div_ceil(BAND)).into_par_iter().for_each(|band| {
            let (j0, w) = (band * BAND, BAND.min(n - band * BAND));
            let a = View { ptr: a_addr as *const f32, ..a };
            let b = column(View { ptr: b_addr as *const f32, ..b }, j0);
            let c = View { ptr: (c_addr as *mut f32).wrapping_add(j0 * c.cs), ..c };
            // SAFETY: band `j0..j0+w` of B and C lies inside the caller's views.
            unsafe { crate_gemm(a, b, c, m, w, k, alpha, beta, Parallelism::None) };
        });
    } else {
        let threads = if m * n * k < 64 * 64 * 64 { Parallelism::None } else { Parallelism::Rayon(rayon::current_num_threads()) };
        if b.rs == 1 && b.cs != 1 && m >= ROWS_TO_TRANSPOSE_B && k >= DEPTH_TO_TRANSPOSE_B && k * n <= B_ROWS_KEEP {
            // SAFETY: B's view covers k floats of each of its n rows (the caller's).
            return with_scratch(&B_ROWS, k * n, B_ROWS_KEEP, |rows| unsafe {
                transpose(b.ptr, b.cs, k, n, rows);
                crate_gemm(a, View::new(rows.as_ptr(), n, false), c, m, n, k, alpha, beta, threads)
            });
        }
        unsafe { crate_gemm(a, b, c, m, n, k, alpha, beta, threads) };
    }
}

/// A B stored along k is copied to rows first (see `transpose.rs`) under at
/// least this many rows of A (the copy is O(k n), the crate's slower packing
/// O(m k n)) ...
const ROWS_TO_TRANSPOSE_B: usize = 128;
/// ... and at least this depth: at k = 256 the crate's packing cost nothing
/// extra, and the copy made 1024x512x256 slower (1.12 -> 1.22 ms); at 512
/// 1024x1024x512 went 3.62 -> 3.30, at 1024 1024^3 7.59 -> 6.69.
const DEPTH_TO_TRANSPOSE_B: usize = 512;
/// The largest B so copied, in floats (8 MiB), kept by the calling thread.
/// (Larger ones, copied in panels of columns, each a crate call, gained
/// nothing: 1024x4096x1024 27.1 -> 28.1 ms.)
const B_ROWS_KEEP: usize = 2 << 20;

thread_local! {
    /// Each calling thread's copy of a transposed B in rows.
    static B_ROWS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One crate call. SAFETY: as [`sgemm_view`]; the crate computes
/// dst = alpha' * dst + beta' * lhs * rhs, so its alpha/beta are our beta/alpha.
unsafe fn crate_gemm(a: View<*const f32>, b: View<*const f32>, c: View<*mut f32>, m: usize, n: usize, k: usize, alpha: f32, beta: f32, threads: Parallelism) {
    let s = |x: usize| x as isize;
    unsafe {
        gemm::gemm(
            m, n, k,
            c.ptr, s(c.cs), s(c.rs),
            beta != 0.0,
            a.ptr, s(a.cs), s(a.rs),
            b.ptr, s(b.cs), s(b.rs),
            beta, alpha,
            false, false, false,
            threads,
        );
    }
}

/// C[M,N] = alpha * A[M,K] * B[K,N] + beta * C over contiguous row-major
/// matrices, `batch` of them back to back.
pub fn sgemm_batched(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
    for (i, c) in c.chunks_mut(m * n).enumerate() {
        let a = View::new(a[i * m * k..].as_ptr(), k, false);
        let b = View::new(b[i * k * n..].as_ptr(), n, false);
        // SAFETY: the slices hold batch * (M*K, K*N, M*N) elements (checked by the caller).
        unsafe { sgemm_view(a, b, View::new(c.as_mut_ptr(), n, false), m, n, k, alpha, beta) };
    }
}
