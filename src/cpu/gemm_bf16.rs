//! bfloat16 x bfloat16 products straight from the bf16 bits, where the CPU
//! has an instruction for them that beats widening both operands for the
//! `gemm` crate's float32 product (which runs at float32 speed minus the
//! widening: 0.95x float32 at 1024^3):
//! * AMX tiles (Intel, Sapphire Rapids on): `gemm_amx.rs`;
//! * AVX512-BF16's `vdpbf16ps` on AMD (Zen 4): it adds two bf16 products into
//!   each float32 lane, twice the multiply-adds of a float32 FMA per
//!   instruction at the same rate there (231 against 116 GFLOP/s a thread).
//!   On Intel it runs at half that rate: the kernel below took 1024^3 in 14
//!   ms where the widened product took 8 (the Sapphire Rapids VM,
//!   bench/RESULTS.md), so Intel CPUs without AMX widen.
//!
//! The `vdpbf16ps` kernel packs both operands as k pairs (the instruction's
//! layout): A in panels of MR rows, B in panels of NR columns, zero past the
//! edges. Each MR x NR tile of C is summed by one task over all of k in order
//! (two products per lane at a time), so results do not depend on the thread
//! count. Subnormal inputs and partial sums are flushed to zero by both
//! instructions (they ignore MXCSR): these kernels are for values of normal
//! range, as weights and activations are.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::alloc;
use super::gemm::View;
use super::par::Shared;
use super::skinny::Finish;

/// Rows of A per register tile.
const MR: usize = 8;
/// Columns of B per register tile: two 16-lane vectors.
const NR: usize = 32;
/// Row panels per task (one B panel stays in L2 while they pass).
const PANELS_PER_TASK: usize = 8;

/// A kernel for bf16 x bf16 products.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kernel {
    /// AMX tiles (`gemm_amx.rs`).
    Amx,
    /// AVX512-BF16 dot products ([`gemm`] below).
    Dot,
}

/// The kernel this CPU runs bf16 x bf16 products with, at the SIMD level in
/// use (`CUDANN_SIMD` below AVX-512 widens), or none: widen both operands.
pub fn kernel() -> Option<Kernel> {
    if super::simd::level() != super::simd::Level::Avx512 {
        None
    } else if super::gemm_amx::usable() {
        Some(Kernel::Amx)
    } else if std::arch::is_x86_feature_detected!("avx512bf16") && amd() {
        Some(Kernel::Dot)
    } else {
        None
    }
}

/// Whether the CPU's vendor is AMD (CPUID leaf 0: "AuthenticAMD").
fn amd() -> bool {
    let leaf = __cpuid(0);
    [leaf.ebx, leaf.edx, leaf.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
}

impl Kernel {
    /// C = alpha op(A) op(B) + beta C (C float32, not read when beta is 0)
    /// for bfloat16 A and B (their bits), k >= 1.
    /// SAFETY: as `gemm::sgemm_view`, C's rows contiguous (`c.cs == 1`);
    /// `self` is what [`kernel`] returned.
    pub unsafe fn gemm(self, a: View<*const u16>, b: View<*const u16>, c: View<*mut f32>, m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
        assert_eq!(c.cs, 1, "bf16 kernels write C by rows");
        let out = Finish { c: Shared(c.ptr), ldc: c.rs, alpha, beta };
        match self {
            Kernel::Amx => unsafe { super::gemm_amx::gemm(a, b, out, m, n, k) },
            Kernel::Dot => unsafe { gemm(a, b, out, m, n, k) },
        }
    }
}

/// A pair of bf16 elements `(x(2p), x(2p + 1))` as one u32 (low half first),
/// zero past `k`.
fn pair(at: impl Fn(usize) -> u16, p: usize, k: usize) -> u32 {
    let lo = at(2 * p) as u32;
    let hi = if 2 * p + 1 < k { at(2 * p + 1) as u32 } else { 0 };
    lo | hi << 16
}

/// C = alpha op(A) op(B) + beta C (C float32, not read when beta is 0) for
/// bfloat16 A and B (their bits), through `vdpbf16ps` (AVX512-BF16 only).
/// SAFETY: as `gemm::sgemm_view`: the views hold the m x k and k x n
/// matrices, `out` the m x n C.
unsafe fn gemm(a: View<*const u16>, b: View<*const u16>, out: Finish, m: usize, n: usize, k: usize) {
    let pairs = k.div_ceil(2);
    let (a_panels, b_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let (pa, pb) = (Shared(a.ptr.cast_mut()), Shared(b.ptr.cast_mut()));
    // A: panel i, pair p, row r at (i * pairs + p) * MR + r.
    let mut packed_a = alloc::filled(a_panels * pairs * MR, 0u32);
    packed_a.par_chunks_mut(pairs * MR).enumerate().for_each(|(i, panel)| {
        for r in 0..MR.min(m - i * MR) {
            let row = i * MR + r;
            let at = |q: usize| unsafe { *pa.ptr().add(row * a.rs + q * a.cs) };
            for p in 0..pairs {
                panel[p * MR + r] = pair(at, p, k);
            }
        }
    });
    // B: panel j, pair p, column q at (j * pairs + p) * NR + q.
    let mut packed_b = alloc::filled(b_panels * pairs * NR, 0u32);
    packed_b.par_chunks_mut(pairs * NR).enumerate().for_each(|(j, panel)| {
        // Pair by pair: along B's rows, where a row-major B is contiguous.
        for p in 0..pairs {
            for q in 0..NR.min(n - j * NR) {
                let col = j * NR + q;
                panel[p * NR + q] = pair(|row| unsafe { *pb.ptr().add(row * b.rs + col * b.cs) }, p, k);
            }
        }
    });
    let groups = a_panels.div_ceil(PANELS_PER_TASK);
    (0..b_panels * groups).into_par_iter().for_each(|task| {
        let (j, g) = (task / groups, task % groups);
        let b_panel = &packed_b[j * pairs * NR..(j + 1) * pairs * NR];
        for i in g * PANELS_PER_TASK..a_panels.min((g + 1) * PANELS_PER_TASK) {
            let a_panel = &packed_a[i * pairs * MR..(i + 1) * pairs * MR];
            // SAFETY: [`kernel`] found AVX512-BF16.
            let tile = unsafe { tile(a_panel, b_panel, pairs) };
            for (r, row) in tile.iter().enumerate().take(MR.min(m - i * MR)) {
                for (q, &sum) in row.iter().enumerate().take(NR.min(n - j * NR)) {
                    // SAFETY: element (i MR + r, j NR + q) of C, written by this task alone.
                    unsafe { out.store(i * MR + r, j * NR + q, sum) };
                }
            }
        }
    });
}

/// One MR x NR tile: the sums over every pair of one A panel and one B panel.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(a: &[u32], b: &[u32], pairs: usize) -> [[f32; NR]; MR] {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        // SAFETY: each panel holds `pairs` rows of NR (B) and MR (A) pairs.
        let (b0, b1): (__m512bh, __m512bh) = unsafe {
            let at = b.as_ptr().add(p * NR);
            (std::mem::transmute(_mm512_loadu_si512(at.cast())), std::mem::transmute(_mm512_loadu_si512(at.add(16).cast())))
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(a[p * MR + r] as i32)) };
            acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
        }
    }
    // SAFETY: two 16-lane float vectors are 32 floats.
    acc.map(|row| unsafe { std::mem::transmute::<[__m512; 2], [f32; NR]>(row) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kernel this CPU has (whether or not [`kernel`] picks it), every
    /// transpose, edges past the tiles and an odd k: within float32
    /// accumulation error of the float64 product of the same bf16 values;
    /// and the same bits at any thread count.
    #[test]
    fn kernels_match_float64_products_of_the_bf16_values() {
        let mut kernels = Vec::new();
        if super::super::gemm_amx::usable() {
            kernels.push(Kernel::Amx);
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            kernels.push(Kernel::Dot);
        }
        if kernels.is_empty() {
            eprintln!("SKIPPED: this CPU has neither AMX nor AVX512-BF16");
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        // bf16 values in [-2, 2): the top 16 bits of float32s.
        let mut value = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0;
            (x.to_bits() >> 16) as u16
        };
        let widen = |b: u16| f32::from_bits((b as u32) << 16) as f64;
        // (Smaller products after larger: the kept packing buffers hold stale tiles.)
        for (m, n, k) in [(33, 17, 1), (70, 45, 131), (129, 100, 1030), (40, 33, 64), (64, 64, 33)] {
            let a: Vec<u16> = (0..m * k).map(|_| value()).collect();
            let b: Vec<u16> = (0..k * n).map(|_| value()).collect();
            let c0: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                // A stored m x k (or k x m transposed), B k x n (or n x k).
                let av = View::new(a.as_ptr(), if ta { m } else { k }, ta);
                let bv = View::new(b.as_ptr(), if tb { k } else { n }, tb);
                let at = |i: usize, p: usize| widen(a[i * av.rs + p * av.cs]);
                let bt = |p: usize, j: usize| widen(b[p * bv.rs + j * bv.cs]);
                let (lda, ldb) = (av.rs.max(av.cs), bv.rs.max(bv.cs));
                let run = |kernel: Kernel, c: &mut [f32]| unsafe {
                    let (av, bv) = (View::new(a.as_ptr(), lda, ta), View::new(b.as_ptr(), ldb, tb));
                    kernel.gemm(av, bv, View::new(c.as_mut_ptr(), n, false), m, n, k, 0.5, -1.0)
                };
                for &kernel in &kernels {
                    let mut c = c0.clone();
                    run(kernel, &mut c);
                    for i in 0..m {
                        for j in 0..n {
                            let want = 0.5 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>() - c0[i * n + j] as f64;
                            let got = c[i * n + j] as f64;
                            assert!((got - want).abs() <= 1e-6 * k as f64 + 1e-6 * want.abs(), "{kernel:?} {m}x{n}x{k} ta={ta} tb={tb} ({i}, {j}): {got} vs {want}");
                        }
                    }
                    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
                    let mut c1 = c0.clone();
                    one.install(|| run(kernel, &mut c1));
                    assert!(c.iter().zip(&c1).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?}: one thread gave other bits");
                }
            }
        }
    }
}
