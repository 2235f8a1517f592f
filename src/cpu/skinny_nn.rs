//! Products with few rows of op(A) and B stored along n: `x·B` with B `[K, N]`
//! row-major (`NN`, `TN`) for a handful of token rows. They are bound by
//! reading B once. A tile walking down a narrow column strip of B starts a new
//! 4 KiB page (a TLB miss, a cold prefetch stream) every row, so this kernel
//! reads B in wide runs instead: each task owns a band of BAND columns (8 KiB
//! of each row), and passes over it 8-16 rows of B at a time, each row a
//! contiguous run across the whole band (sequential streams the prefetcher
//! follows). Register tiles of MR rows of A x 64 columns add a pass's rows into
//! C's band, kept in a float32 buffer between passes (in L1/L2).
//!
//! Sum order: every element of C is `fma(a[i,K-1], b[K-1,j], ... fma(a[i,0],
//! b[0,j], 0))`, k ascending, in one float32 accumulator (a separate multiply
//! and add where the target has no FMA), then `alpha * sum (+ beta * C)`. It
//! depends on neither the band nor the tile, so results are the same bits for
//! any thread count.

use super::simd::simd;
use rayon::prelude::*;

use super::alloc;
use super::gemm::View;
use super::par::Shared;
use super::reduce::LANES;
use super::skinny::{Finish, Lanes, edge_tile, load, mul_add, packed_rows};

/// Up to this many rows of op(A), this kernel beats the crate (1.05-2.6x at
/// 1-32 rows; even at 48, 0.8x at 64: bench/RESULTS.md, issue 20).
const MAX_ROWS: usize = 32;
/// Rows of A per register tile.
const MR: usize = 4;
/// Lane groups per register tile: MR x NV accumulators stay in registers.
const NV: usize = 4;
/// Rows of B per pass over a band, for one row tile of A and for more. Each
/// row is a stream; B's rows usually lie a power of two apart, so more streams
/// than this compete for the same L1 sets (measured: 8 best for 1-4 rows of A,
/// 16 for 16-32).
const PASS_FEW: usize = 8;
const PASS_MANY: usize = 16;
/// Columns per task (8 KiB runs of each row of B): fixed, so the split never
/// depends on the thread count.
const BAND: usize = 2048;

/// C = alpha op(A) B + beta C for `m <= MAX_ROWS` rows, when B and C are stored
/// with unit stride along n; returns false (nothing done) for any other layout.
/// SAFETY: as `gemm::sgemm_view`.
pub unsafe fn sgemm(a: View<*const f32>, b: View<*const f32>, c: View<*mut f32>, m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> bool {
    if m == 0 || m > MAX_ROWS || k == 0 || c.cs != 1 || b.cs != 1 {
        return false;
    }
    let packed = unsafe { packed_rows(a, m, k) };
    let out = Finish { c: Shared(c.ptr), ldc: c.rs, alpha, beta };
    let (b, ldb) = (Shared(b.ptr.cast_mut()), b.rs);
    (0..n.div_ceil(BAND)).into_par_iter().for_each(|band| {
        let j0 = band * BAND;
        unsafe { band_product(&packed, m, k, b.ptr().add(j0), ldb, j0, BAND.min(n - j0), out) };
    });
    true
}

/// Columns `j0 .. j0 + width` of C; `b` points at B's column j0.
#[simd]
unsafe fn band_product(a: &[f32], m: usize, k: usize, b: *const f32, ldb: usize, j0: usize, width: usize, out: Finish) {
    // LEVEL: the SIMD level this copy is compiled for (#[simd]).
    let fused = LEVEL.fma();
    let mut sums = alloc::filled(m * width, 0.0f32);
    let full = width / LANES * LANES;
    // More rows of A amortise the sums' trip to L2 over more rows of B.
    let pass = if m <= MR { PASS_FEW } else { PASS_MANY };
    for p0 in (0..k).step_by(pass) {
        let rows = pass.min(k - p0);
        for j in (0..full).step_by(NV * LANES) {
            let groups = (full - j).min(NV * LANES) / LANES;
            for i0 in (0..m).step_by(MR) {
                let tile = AddTile { a: a[i0 * k + p0..].as_ptr(), k, b: unsafe { b.add(p0 * ldb + j) }, ldb, rows, sums: unsafe { sums.as_mut_ptr().add(i0 * width + j) }, width, fused };
                match (MR.min(m - i0), groups) {
                    (4, 4) => tile.run::<4, 4>(),
                    (r, g) => tile.run_any(r, g),
                }
            }
        }
    }
    // Columns past the last whole lane group, in the same order one at a time.
    for i in 0..m {
        for j in full..width {
            sums[i * width + j] = (0..k).fold(0.0, |s, p| {
                let (x, y) = (a[i * k + p], unsafe { *b.add(p * ldb + j) });
                if fused { x.mul_add(y, s) } else { s + x * y }
            });
        }
    }
    for i in 0..m {
        for j in 0..width {
            unsafe { out.store(i, j0 + j, sums[i * width + j]) };
        }
    }
}

/// Up to `rows` (one pass) rows of B, from `b` (row stride `ldb`), times up to MR
/// rows of A (row stride `k`), added into the band's sums (row stride `width`).
struct AddTile {
    a: *const f32,
    k: usize,
    b: *const f32,
    ldb: usize,
    rows: usize,
    sums: *mut f32,
    width: usize,
    fused: bool,
}

impl AddTile {
    /// R rows of A x G lane groups, known at compile time so the R * G
    /// accumulators stay in registers.
    #[inline(always)]
    fn run<const R: usize, const G: usize>(&self) {
        let at = |r: usize, g: usize| unsafe { self.sums.add(r * self.width + g * LANES) };
        let mut acc: [[Lanes; G]; R] = std::array::from_fn(|r| std::array::from_fn(|g| unsafe { load(at(r, g)) }));
        for p in 0..self.rows {
            let bv: [Lanes; G] = std::array::from_fn(|g| unsafe { load(self.b.add(p * self.ldb + g * LANES)) });
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = [unsafe { *self.a.add(r * self.k + p) }; LANES];
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    mul_add(acc, &x, bv, self.fused);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (g, v) in acc.iter().enumerate() {
                unsafe { at(r, g).cast::<Lanes>().write_unaligned(*v) };
            }
        }
    }

    /// An edge tile of `rows` x `groups` (either below 4).
    #[inline(always)]
    fn run_any(&self, rows: usize, groups: usize) {
        edge_tile!(self, rows, groups)
    }
}
