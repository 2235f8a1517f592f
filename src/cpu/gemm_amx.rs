//! bfloat16 x bfloat16 products on Intel's AMX tiles (Sapphire Rapids and
//! later): one `tdpbf16ps` multiplies a 16 x 32 bf16 tile of A by a 32 x 16
//! tile of B into a 16 x 16 float32 tile, 8192 multiply-adds, where an
//! AVX-512 FMA does 16. On the 2-core Sapphire Rapids VM, 1024^3 takes 3.8
//! ms against 7.4 for the float32 product and 14 for AVX512-BF16 dot
//! products (bench/RESULTS.md). Tile loads, not the products, bound it there:
//! four 1 KiB loads took 55 ns, the four products they feed 21.
//!
//! Both operands are packed into whole tiles of 16 rows of 64 bytes, zero
//! past the edges: A as 32-row blocks, B as 32-column panels in pairs of k
//! (the instruction's layout: a row of a B tile is 16 columns of one k pair).
//! A task takes one B panel and a few A blocks; each 32 x 32 block of C is
//! summed by one task in four accumulator tiles over all of k in order, so
//! results do not depend on the thread count. Like `vdpbf16ps`, the
//! instruction flushes subnormal inputs and results to zero (it ignores
//! MXCSR) and rounds each product-pair addition to nearest even.
//!
//! The tile registers are unknown to the compiler: each block's whole tile
//! program (configure, zero, the k loop, store, release) is one `asm!`.

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::alloc;
use super::gemm::View;
use super::par::Shared;
use super::skinny::Finish;

/// Rows (and columns) of a tile, and the pairs of k in a tile's row.
const T: usize = 16;
/// A tile: 16 rows of 16 u32 (a bf16 pair each), 1 KiB.
const TILE: usize = T * T;
/// Rows of A per block and columns of B per panel: two tiles.
const BLOCK: usize = 2 * T;
/// A blocks per task (one B panel stays in L2 while they pass).
const BLOCKS_PER_TASK: usize = 4;

/// Whether this CPU has AMX tiles with bf16 products and Linux lets this
/// process use them (it must ask: the tile data is 8 KiB more of every
/// thread's saved state). Asked once.
pub fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let leaf = __cpuid_count(7, 0);
        let has = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
        has && request_tile_data()
    })
}

/// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): 0 when granted.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a syscall with integer arguments; it changes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Elsewhere the tiles stay unused.
#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads: palette 1, every tile 16 rows of
/// 64 bytes (tmm0-3 the accumulators of C, tmm4-5 A's, tmm6-7 B's).
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: Config = Config {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// C = alpha op(A) op(B) + beta C (C float32, not read when beta is 0) for
/// bfloat16 A and B (their bits). Call only when [`usable`].
/// SAFETY: as `gemm::sgemm_view`: the views hold the m x k and k x n
/// matrices, `out` the m x n C.
pub(super) unsafe fn gemm(a: View<*const u16>, b: View<*const u16>, out: Finish, m: usize, n: usize, k: usize) {
    let steps = k.div_ceil(2 * T); // tiles along k
    let (blocks, panels) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    alloc::with_scratch(&PACKED_A, blocks * steps * 2 * TILE, KEEP, |packed_a| {
        alloc::with_scratch(&PACKED_B, panels * steps * 2 * TILE, KEEP, |packed_b| unsafe {
            pack_a(a, m, k, steps, packed_a);
            pack_b(b, n, k, steps, packed_b);
            products(packed_a, packed_b, out, [m, n, steps]);
        })
    })
}

/// Packed operands a calling thread keeps between calls, each up to 32 MiB
/// (A or B of 4096 x 4096): fresh ones cost page faults worth more than the
/// product (64x4096x4096 `x·Wᵀ`: 25 against 7.8 ms).
const KEEP: usize = 8 << 20;

thread_local! {
    static PACKED_A: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    static PACKED_B: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// op(A) into `packed`: block i, step s, half h (rows 16 h ..), row r, pair p
/// at ((i * steps + s) * 2 + h) * TILE + r * T + p; zero past m and k.
/// SAFETY: `a` covers m x k; `packed` holds the blocks.
unsafe fn pack_a(a: View<*const u16>, m: usize, k: usize, steps: usize, packed: &mut [u32]) {
    let a_at = Shared(a.ptr.cast_mut());
    packed.par_chunks_mut(steps * 2 * TILE).enumerate().for_each(|(i, block)| {
        if (i + 1) * BLOCK > m {
            block.fill(0); // (a kept buffer holds the last call's tiles)
        }
        for row in i * BLOCK..m.min((i + 1) * BLOCK) {
            let (h, r) = ((row % BLOCK) / T, row % T);
            for s in 0..steps {
                let tile_row = &mut block[(s * 2 + h) * TILE + r * T..][..T];
                // SAFETY: row `row` of op(A), elements 32 s .. k.
                unsafe { pairs_along_k(a_at.ptr().add(row * a.rs), a.cs, s * 2 * T, k, tile_row) };
            }
        }
    });
}

/// op(B) into `packed`: panel j, step s, half h (columns 16 h ..), pair p,
/// column q at ((j * steps + s) * 2 + h) * TILE + p * T + q; zero past n and k.
/// SAFETY: `b` covers k x n; `packed` holds the panels.
unsafe fn pack_b(b: View<*const u16>, n: usize, k: usize, steps: usize, packed: &mut [u32]) {
    let b_at = Shared(b.ptr.cast_mut());
    packed.par_chunks_mut(steps * 2 * TILE).enumerate().for_each(|(j, panel)| {
        let cols = j * BLOCK..n.min((j + 1) * BLOCK);
        // (a kept buffer holds the last call's tiles)
        if cols.len() < BLOCK {
            panel.fill(0);
        } else if k % (2 * T) != 0 {
            panel[(steps - 1) * 2 * TILE..].fill(0);
        }
        for s in 0..steps {
            let tiles = &mut panel[s * 2 * TILE..][..2 * TILE];
            if b.cs == 1 {
                // B's rows along n: each pair of rows, the panel's columns at once.
                for p in 0..T.min((k - s * 2 * T).div_ceil(2)) {
                    let e = s * 2 * T + 2 * p;
                    // SAFETY: rows e (and e + 1 < k) of op(B), the panel's columns.
                    let lo = unsafe { std::slice::from_raw_parts(b_at.ptr().add(e * b.rs + cols.start), cols.len()) };
                    let hi = (e + 1 < k).then(|| unsafe { std::slice::from_raw_parts(b_at.ptr().add((e + 1) * b.rs + cols.start), cols.len()) });
                    for (h, tile) in tiles.chunks_mut(TILE).enumerate().take(cols.len().div_ceil(T)) {
                        let x = h * T..cols.len().min(h * T + T);
                        let out = &mut tile[p * T..][..x.len()];
                        match hi {
                            Some(hi) => out.iter_mut().zip(&lo[x.clone()]).zip(&hi[x]).for_each(|((o, &l), &h)| *o = l as u32 | (h as u32) << 16),
                            None => out.iter_mut().zip(&lo[x]).for_each(|(o, &l)| *o = l as u32),
                        }
                    }
                }
            } else {
                // Along k (x·Wᵀ's W) or any other stride: column by column,
                // a tile's row p holding each column's pair p (a transpose).
                let mut column = [0u32; T];
                for col in cols.clone() {
                    let x = col - cols.start;
                    // SAFETY: column `col` of op(B), elements 32 s .. k.
                    unsafe { pairs_along_k(b_at.ptr().add(col * b.cs), b.rs, s * 2 * T, k, &mut column) };
                    let tile = &mut tiles[(x / T) * TILE..][..TILE];
                    for (p, &pair) in column.iter().enumerate() {
                        tile[p * T + x % T] = pair;
                    }
                }
            }
        }
    });
}

/// The products of the packed blocks and panels, finished into C by `out`.
/// SAFETY: AMX usable; `out` covers m x n; the packed operands as packed.
unsafe fn products(packed_a: &[u32], packed_b: &[u32], out: Finish, [m, n, steps]: [usize; 3]) {
    let (blocks, panels) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    let groups = blocks.div_ceil(BLOCKS_PER_TASK);
    (0..panels * groups).into_par_iter().for_each(|task| {
        let (j, g) = (task / groups, task % groups);
        let b_panel = &packed_b[j * steps * 2 * TILE..][..steps * 2 * TILE];
        for i in g * BLOCKS_PER_TASK..blocks.min((g + 1) * BLOCKS_PER_TASK) {
            let a_block = &packed_a[i * steps * 2 * TILE..][..steps * 2 * TILE];
            let mut sums = [[0f32; BLOCK]; BLOCK];
            // SAFETY: `usable()` was checked by the caller; both slices hold
            // `steps` pairs of tiles, `sums` 32 rows of 32.
            unsafe { block_product(a_block.as_ptr(), b_panel.as_ptr(), steps, &mut sums) };
            for (r, row) in sums.iter().enumerate().take(BLOCK.min(m - i * BLOCK)) {
                for (q, &sum) in row.iter().enumerate().take(BLOCK.min(n - j * BLOCK)) {
                    // SAFETY: element (32 i + r, 32 j + q) of C, written by this task alone.
                    unsafe { out.store(i * BLOCK + r, j * BLOCK + q, sum) };
                }
            }
        }
    });
}

/// `pairs.len()` bf16 pairs `(x(e), x(e + 1))` of the line `x(e) = at[e *
/// stride]` from element `first`, each as one u32 (low half first), zero past
/// `k`. A contiguous line (stride 1) is copied as it is.
/// SAFETY: `at` holds the line's elements up to `k`.
unsafe fn pairs_along_k(at: *const u16, stride: usize, first: usize, k: usize, pairs: &mut [u32]) {
    let len = (2 * pairs.len()).min(k - first);
    if stride == 1 {
        // Little-endian pairs are the line's bytes as they are.
        pairs.fill(0);
        // SAFETY: elements first .. first + len of a contiguous line, into
        // 2 len <= 4 pairs.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(at.add(first), pairs.as_mut_ptr().cast::<u16>(), len) };
    } else {
        for (p, pair) in pairs.iter_mut().enumerate() {
            let x = |e: usize| if e < len { unsafe { *at.add((first + e) * stride) as u32 } } else { 0 };
            *pair = x(2 * p) | x(2 * p + 1) << 16;
        }
    }
}

/// One 32 x 32 block of C: the four accumulator tiles over `steps` pairs of A
/// tiles (rows 0-15, 16-31) and B tiles (columns 0-15, 16-31), 2 KiB apart
/// step to step, stored into `sums`.
/// SAFETY: AMX usable; `a` and `b` hold `steps * 2` tiles each; steps >= 1.
unsafe fn block_product(a: *const u32, b: *const u32, steps: usize, sums: &mut [[f32; BLOCK]; BLOCK]) {
    unsafe {
        asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a} + {row}*1]",
            "tileloadd tmm5, [{a} + {row}*1 + 1024]",
            "tileloadd tmm6, [{b} + {row}*1]",
            "tileloadd tmm7, [{b} + {row}*1 + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 2b",
            // C's rows are 128 bytes: the right tiles 64 bytes in, the lower 16 rows down.
            "tilestored [{c} + {c_row}*1], tmm0",
            "tilestored [{c} + {c_row}*1 + 64], tmm1",
            "tilestored [{c} + {c_row}*1 + 2048], tmm2",
            "tilestored [{c} + {c_row}*1 + 2112], tmm3",
            "tilerelease",
            cfg = in(reg) &CONFIG,
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            steps = inout(reg) steps => _,
            row = in(reg) 64usize,
            c = in(reg) sums.as_mut_ptr(),
            c_row = in(reg) 128usize,
            options(nostack),
        );
    }
}
