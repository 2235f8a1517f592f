//! Products with few rows of op(A) and B stored along k: decoding's linear
//! layers `x·Wᵀ` (W `[N, K]` row-major) for a handful of token rows. They are
//! bound by reading W once, and the `gemm` crate loses there by 3-10x (it reads
//! W as a transposed view: 2.5-2.8 GB/s at M = 4-16 against numpy's 7-9,
//! bench/RESULTS.md). This kernel reads W straight from the caller's memory,
//! once for up to 4 rows of A (from L2 for the others): tiles of 4 rows of A x
//! 4 rows of W, dot products over k in 16-lane accumulators, W's row chunks in
//! parallel. B stored along n (`x·B`) has a kernel of its own
//! (`skinny_nn.rs`, which shares these helpers). Each element of C is summed by one task in
//! a fixed order (k blocks, then lanes by a fixed tree), so results do not
//! depend on the thread count. W may be float16 or bfloat16 ([`Weight`]): it
//! is widened as it is loaded, so half-precision weights are read at half the
//! bytes.

use super::simd::simd;
use rayon::prelude::*;

use super::alloc;
use super::convert::bf16_unquieted;
use super::par::Shared;
use super::gemm::View;
use super::reduce::{LANES, lane_total};

/// Up to this many rows of op(A), this kernel beats the crate (measured with
/// bench/gemm_bench.py); above it the products are bound by arithmetic.
pub(crate) const MAX_ROWS: usize = 32;
/// Rows of A per register tile.
const MR: usize = 4;
/// Depth of a k block when A has more than one row tile: the tiles' blocks of
/// A stay in L2 while each row of W passes (128 KiB at 32 rows). Each block
/// ends with a horizontal sum per accumulator, which at 512 cost a fifth of
/// the time (Zen 4: 2048 took 16x16384x4096 from 22.8 to 19.0 ms). On the
/// 2-core Xeon (48 KiB L1), 1024 beat 2048 at 8-32 rows by 6-16% (32x4096x4096
/// NT 8.17 -> 6.88 ms), W's four rows of a block nearer while each A tile
/// passes (bench/RESULTS.md).
const KB: usize = 1024;
/// Rows of W per task: fixed, so the split never depends on the thread count.
const CHUNK_ROWS: usize = 256;

pub(super) type Lanes = [f32; LANES];

#[inline(always)]
pub(super) unsafe fn load(p: *const f32) -> Lanes {
    unsafe { p.cast::<Lanes>().read_unaligned() }
}

/// acc + a * b, fused where the target has FMA (a separate multiply and add
/// otherwise: std's mul_add would call libm for every lane there).
#[inline(always)]
pub(super) fn mul_add(acc: &mut Lanes, a: &Lanes, b: &Lanes, fused: bool) {
    for i in 0..LANES {
        acc[i] = if fused { a[i].mul_add(b[i], acc[i]) } else { acc[i] + a[i] * b[i] };
    }
}

/// An element type of W. float32 and bfloat16 rows are dotted straight from
/// the caller's memory (a bfloat16 widens in a register: a shift); float16
/// rows are widened a block at a time into a float32 buffer that stays in L1
/// (F16C slice conversion), then dotted like float32 rows.
pub trait Weight: Copy + Send + Sync {
    /// Whether rows are read in place, through [`Weight::lanes`].
    const DIRECT: bool = false;
    /// `dst.len()` elements from `src`, as float32.
    unsafe fn widen(src: *const Self, dst: &mut [f32]);
    /// LANES elements from `src`, as float32.
    #[inline(always)]
    unsafe fn lanes(src: *const Self) -> Lanes {
        let mut wide = [0.0; LANES];
        unsafe { Self::widen(src, &mut wide) };
        wide
    }
    /// One element, as float32.
    #[inline(always)]
    unsafe fn one(src: *const Self) -> f32 {
        let mut wide = [0.0];
        unsafe { Self::widen(src, &mut wide) };
        wide[0]
    }
}

impl Weight for f32 {
    const DIRECT: bool = true;
    unsafe fn widen(src: *const f32, dst: &mut [f32]) {
        dst.copy_from_slice(unsafe { std::slice::from_raw_parts(src, dst.len()) });
    }
    #[inline(always)]
    unsafe fn lanes(src: *const f32) -> Lanes {
        unsafe { load(src) }
    }
    #[inline(always)]
    unsafe fn one(src: *const f32) -> f32 {
        unsafe { *src }
    }
}

impl Weight for half::bf16 {
    const DIRECT: bool = true;
    /// A bfloat16 is the top half of a float32: a shift.
    #[inline(always)]
    unsafe fn widen(src: *const Self, dst: &mut [f32]) {
        let src = unsafe { std::slice::from_raw_parts(src.cast::<u16>(), dst.len()) };
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16_unquieted(s);
        }
    }
    #[inline(always)]
    unsafe fn lanes(src: *const Self) -> Lanes {
        // A plain loop: `array::map` was left out of line, a call per load.
        let bits = unsafe { src.cast::<[u16; LANES]>().read_unaligned() };
        let mut wide = [0.0; LANES];
        for (w, &b) in wide.iter_mut().zip(&bits) {
            *w = bf16_unquieted(b);
        }
        wide
    }
}

impl Weight for half::f16 {
    /// The `half` crate's slice conversion (F16C where the CPU has it).
    #[inline(always)]
    unsafe fn widen(src: *const Self, dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        unsafe { std::slice::from_raw_parts(src, dst.len()) }.convert_to_f32_slice(dst);
    }
}

/// C = alpha op(A) op(B) + beta C for `m <= MAX_ROWS` rows, when op(B) is
/// stored with unit stride along k and C along n; returns false (nothing done)
/// for any other layout. SAFETY: as `gemm::sgemm_view`.
pub unsafe fn sgemm<W: Weight>(a: View<*const f32>, b: View<*const W>, c: View<*mut f32>, m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> bool {
    if m == 0 || m > MAX_ROWS || k == 0 || c.cs != 1 || b.rs != 1 {
        return false;
    }
    let packed = unsafe { packed_rows(a, m, k) };
    let out = Finish { c: Shared(c.ptr), ldc: c.rs, alpha, beta };
    let (w, ldw) = (Shared(b.ptr.cast_mut()), b.cs);
    (0..n.div_ceil(CHUNK_ROWS)).into_par_iter().for_each(|chunk| {
        let n0 = chunk * CHUNK_ROWS;
        unsafe { dots_chunk(&packed, m, k, w.ptr(), ldw, n0, CHUNK_ROWS.min(n - n0), out) };
    });
    true
}

/// op(A) packed into rows of k (a small copy: m * k floats), whatever its
/// layout. SAFETY: `a` covers `m x k`.
pub(super) unsafe fn packed_rows(a: View<*const f32>, m: usize, k: usize) -> Vec<f32> {
    let mut packed = alloc::filled(m * k, 0.0f32);
    for (i, row) in packed.chunks_exact_mut(k).enumerate() {
        for (p, x) in row.iter_mut().enumerate() {
            *x = unsafe { *a.ptr.add(i * a.rs + p * a.cs) };
        }
    }
    packed
}

/// Where finished sums go: `C[i, j] = alpha * sum + beta * C[i, j]` (C not read
/// when beta is 0).
#[derive(Clone, Copy)]
pub(super) struct Finish {
    pub(super) c: Shared<f32>,
    pub(super) ldc: usize,
    pub(super) alpha: f32,
    pub(super) beta: f32,
}

impl Finish {
    pub(super) unsafe fn store(&self, i: usize, j: usize, sum: f32) {
        let c = unsafe { self.c.ptr().add(i * self.ldc + j) };
        unsafe { *c = if self.beta == 0.0 { self.alpha * sum } else { self.alpha * sum + self.beta * *c } };
    }
}

/// Columns `n0 .. n0 + count` of C for B = Wᵀ, W stored `[n, k]` (row stride
/// `ldw`): dot products of A's rows with W's rows.
#[simd]
unsafe fn dots_chunk<W: Weight>(a: &[f32], m: usize, k: usize, w: *const W, ldw: usize, n0: usize, count: usize, out: Finish) {
    // LEVEL: the SIMD level this copy is compiled for (#[simd]).
    let fused = LEVEL.fma();
    #[cfg(target_arch = "x86_64")]
    if m == 1 && W::DIRECT && LEVEL == super::simd::Level::Avx512 {
        // SAFETY: this copy runs only where the CPU has AVX-512; the chunk's rows lie in W.
        unsafe { dot_rows_avx512(a, w.add(n0 * ldw), ldw, k, count, |q, d| out.store(0, n0 + q, d)) };
        return;
    }
    if m == 1 && W::DIRECT {
        // One row of A (a gemv) below AVX-512: W's rows one after another, a
        // single sequential stream, each dotted four accumulators deep.
        for q in 0..count {
            unsafe { out.store(0, n0 + q, dot_row(a, w.add((n0 + q) * ldw), k, fused)) };
        }
        return;
    }
    let mut sums = alloc::filled(m * count, 0.0f32);
    // One row tile's A fits in L2 whole: each W row is then read in one run
    // (float16 rows go through the KB-wide buffer in blocks).
    let depth = if m <= MR && W::DIRECT { k } else { KB };
    let mut wide = [0.0f32; NR * KB];
    for k0 in (0..k).step_by(depth) {
        let kl = depth.min(k - k0);
        for q0 in (0..count).step_by(NR) {
            let rows = Rows { a, m, k, k0, kl, q0, count, fused };
            if W::DIRECT {
                rows.dot(unsafe { w.add((n0 + q0) * ldw + k0) }, ldw, &mut sums);
            } else {
                for q in 0..NR.min(count - q0) {
                    unsafe { W::widen(w.add((n0 + q0 + q) * ldw + k0), &mut wide[q * KB..q * KB + kl]) };
                }
                rows.dot(wide.as_ptr(), KB, &mut sums);
            }
        }
    }
    for i in 0..m {
        for q in 0..count {
            unsafe { out.store(i, n0 + q, sums[i * count + q]) };
        }
    }
}

/// x · w over `k` elements with four independent accumulators.
#[inline(always)]
fn dot_row<V: Weight>(x: &[f32], w: *const V, k: usize, fused: bool) -> f32 {
    const STEP: usize = 4 * LANES;
    let mut acc = [[0.0f32; LANES]; 4];
    let full = k / STEP * STEP;
    for p in (0..full).step_by(STEP) {
        // 2048 elements ahead (8 KiB of float32): on the Sapphire Rapids VM
        // (at AVX-512, before the four-row kernel) a one-row 4096 x 4096
        // product read W at 42-51 GB/s against 36-47 without
        // (bench/RESULTS.md); 4096 ahead was no better.
        for u in 0..4 {
            super::reduce::prefetch(w.wrapping_add(p + 2048 + u * LANES).cast());
        }
        for (u, acc) in acc.iter_mut().enumerate() {
            let (xv, wv) = unsafe { (load(x.as_ptr().add(p + u * LANES)), V::lanes(w.add(p + u * LANES))) };
            mul_add(acc, &xv, &wv, fused);
        }
    }
    let mut p = full;
    while p + LANES <= k {
        let (xv, wv) = unsafe { (load(x.as_ptr().add(p)), V::lanes(w.add(p))) };
        mul_add(&mut acc[0], &xv, &wv, fused);
        p += LANES;
    }
    let tail: f32 = (p..k).map(|i| x[i] * unsafe { V::one(w.add(i)) }).sum();
    let mut total = [0.0f32; LANES];
    for i in 0..LANES {
        total[i] = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
    }
    lane_total(total) + tail
}

/// x dotted with `count` rows of W (row stride `ldw`), four rows at a time:
/// four sequential streams, which the Sapphire Rapids VM reads from DRAM
/// faster than one (1x16384x4096 `x·Wᵀ`, a 256 MiB W: 10.0 -> 7.9-8.1 ms,
/// numpy 7.7-7.8; from L3, 1x4096 the same; bench/RESULTS.md). In
/// intrinsics: written with `[f32; 16]` accumulators, LLVM vectorised the
/// loop across the four rows instead, and it ran slower than one row at a
/// time. Each row is summed in one 16-lane accumulator over k, then by
/// `lane_total`, plus the tail: the order of the few-row tiles.
/// Safety: the CPU has AVX-512 F; the rows lie in W.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_avx512<V: Weight>(x: &[f32], w: *const V, ldw: usize, k: usize, count: usize, mut put: impl FnMut(usize, f32)) {
    let mut q = 0;
    while q + 4 <= count {
        let sums = unsafe { rows_avx512::<V, 4>(x, w.add(q * ldw), ldw, k) };
        for (i, sum) in sums.into_iter().enumerate() {
            put(q + i, sum);
        }
        q += 4;
    }
    for q in q..count {
        put(q, unsafe { rows_avx512::<V, 1>(x, w.add(q * ldw), ldw, k) }[0]);
    }
}

/// x dotted with R rows of W. Safety: as [`dot_rows_avx512`].
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512<V: Weight, const R: usize>(x: &[f32], w: *const V, ldw: usize, k: usize) -> [f32; R] {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); R];
    let full = k / LANES * LANES;
    for p in (0..full).step_by(LANES) {
        let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(p)) };
        for (q, acc) in acc.iter_mut().enumerate() {
            let wv = unsafe { V::lanes(w.add(q * ldw + p)) };
            *acc = _mm512_fmadd_ps(xv, unsafe { _mm512_loadu_ps(wv.as_ptr()) }, *acc);
        }
    }
    std::array::from_fn(|q| {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: lanes holds 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[q]) };
        let tail: f32 = (full..k).map(|i| x[i] * unsafe { V::one(w.add(q * ldw + i)) }).sum();
        lane_total(lanes) + tail
    })
}

/// Rows of W per dot tile.
const NR: usize = 4;

/// `$tile.run::<R, Q>()` for an edge tile of `$rows` x `$cols` (each 1 to 4,
/// not both 4), with R and Q as constants so the accumulators stay in
/// registers (shared by this kernel's and skinny_nn's tiles).
macro_rules! edge_tile {
    ($tile:expr, $rows:expr, $cols:expr) => {
        match ($rows, $cols) {
            (1, 1) => $tile.run::<1, 1>(),
            (1, 2) => $tile.run::<1, 2>(),
            (1, 3) => $tile.run::<1, 3>(),
            (1, _) => $tile.run::<1, 4>(),
            (2, 1) => $tile.run::<2, 1>(),
            (2, 2) => $tile.run::<2, 2>(),
            (2, 3) => $tile.run::<2, 3>(),
            (2, _) => $tile.run::<2, 4>(),
            (3, 1) => $tile.run::<3, 1>(),
            (3, 2) => $tile.run::<3, 2>(),
            (3, 3) => $tile.run::<3, 3>(),
            (3, _) => $tile.run::<3, 4>(),
            (_, 1) => $tile.run::<4, 1>(),
            (_, 2) => $tile.run::<4, 2>(),
            _ => $tile.run::<4, 3>(),
        }
    };
}
pub(super) use edge_tile;

/// Every row of A against the W rows `q0 ..` (up to NR) of a chunk of
/// `count`, over the k block `k0 .. k0 + kl`.
struct Rows<'a> {
    a: &'a [f32],
    m: usize,
    k: usize,
    k0: usize,
    kl: usize,
    q0: usize,
    count: usize,
    fused: bool,
}

impl Rows<'_> {
    /// Adds the block's dot products into `sums` (`[m, count]`), W's rows
    /// at `w` with stride `ldw`.
    #[inline(always)]
    fn dot<V: Weight>(&self, w: *const V, ldw: usize, sums: &mut [f32]) {
        let (m, count, q0) = (self.m, self.count, self.q0);
        for i0 in (0..m).step_by(MR) {
            let tile = DotTile { a: &self.a[i0 * self.k + self.k0..], k: self.k, w, ldw, kl: self.kl, fused: self.fused };
            let got = match (MR.min(m - i0), NR.min(count - q0)) {
                (4, 4) => tile.run::<4, 4>(),
                (r, q) => tile.run_any(r, q),
            };
            for (r, row) in got.iter().enumerate().take(MR.min(m - i0)) {
                for (q, &v) in row.iter().enumerate().take(NR.min(count - q0)) {
                    sums[(i0 + r) * count + q0 + q] += v;
                }
            }
        }
    }
}

/// Up to MR rows of A (row stride `k`) dotted with up to NR rows of W over one
/// k block of `kl`.
struct DotTile<'a, V> {
    a: &'a [f32],
    k: usize,
    w: *const V,
    ldw: usize,
    kl: usize,
    fused: bool,
}

impl<V: Weight> DotTile<'_, V> {
    /// The full R x Q tile, with R and Q known at compile time so the R * Q
    /// accumulators stay in registers.
    #[inline(always)]
    fn run<const R: usize, const Q: usize>(&self) -> [[f32; NR]; MR] {
        let mut acc = [[[0.0f32; LANES]; Q]; R];
        let full = self.kl / LANES * LANES;
        for p in (0..full).step_by(LANES) {
            // A plain loop: `array::from_fn` was left out of line.
            let mut wv = [[0.0; LANES]; Q];
            for (q, wv) in wv.iter_mut().enumerate() {
                *wv = unsafe { V::lanes(self.w.add(q * self.ldw + p)) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = unsafe { load(self.a.as_ptr().add(r * self.k + p)) };
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    mul_add(acc, &x, wv, self.fused);
                }
            }
        }
        let mut out = [[0.0f32; NR]; MR];
        for r in 0..R {
            for q in 0..Q {
                let tail: f32 = (full..self.kl).map(|p| self.a[r * self.k + p] * unsafe { V::one(self.w.add(q * self.ldw + p)) }).sum();
                out[r][q] = lane_total(acc[r][q]) + tail;
            }
        }
        out
    }

    /// An edge tile of `rows` x `wrows` (either below 4).
    #[inline(always)]
    fn run_any(&self, rows: usize, wrows: usize) -> [[f32; NR]; MR] {
        edge_tile!(self, rows, wrows)
    }
}
