//! A transposed float32 operand copied to rows, for the `gemm` crate: the
//! crate packs a B stored along k one strided float at a time, which cost
//! 1024^3 `x·Wᵀ` a quarter more time than the same product with B in rows.
//! The copy runs in 8 x 8 register transposes at the AVX levels, so it costs
//! a few percent of such a product.

use rayon::prelude::*;

/// Output rows per task: 16 floats of every source row, a cache line.
const STRIP: usize = 16;

/// `dst[r * cols + c] = src[c * ld + r]` for r < rows, c < cols: the
/// `rows x cols` matrix whose columns are the first `rows` floats of each of
/// `cols` source rows, `ld` apart. Safety: those source floats are readable.
pub unsafe fn transpose(src: *const f32, ld: usize, rows: usize, cols: usize, dst: &mut [f32]) {
    let dst = &mut dst[..rows * cols];
    let src = src as usize; // to cross threads
    dst.par_chunks_mut(STRIP * cols.max(1)).enumerate().for_each(|(strip, out)| {
        let (r0, height) = (strip * STRIP, out.len() / cols.max(1));
        let src = (src as *const f32).wrapping_add(r0);
        // SAFETY: rows r0..r0 + height of the transpose read src's floats r0..r0 + height of each row.
        unsafe { transpose_strip(src, ld, height, cols, out) }
    });
}

/// One strip of [`transpose`]: `height` output rows from `src` on, in
/// tiles of 16 x 16 at the AVX levels (each source line read and each output
/// line written whole in one tile: lines a power of two apart share the
/// cache's sets, so a line left half done is often gone when it is needed).
unsafe fn transpose_strip(src: *const f32, ld: usize, height: usize, cols: usize, out: &mut [f32]) {
    let mut c0 = 0;
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= super::simd::Level::Avx2 && height == STRIP {
        let avx512 = super::simd::level() == super::simd::Level::Avx512;
        while c0 + 16 <= cols {
            // SAFETY: the 16 x 16 tile at (0, c0) lies inside the strip and its
            // source; each level runs only where the CPU has its features.
            unsafe {
                if avx512 {
                    block16(src.wrapping_add(c0 * ld), ld, out.as_mut_ptr().add(c0), cols);
                } else {
                    for (r, c) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
                        block8(src.wrapping_add((c0 + c) * ld + r), ld, out.as_mut_ptr().add(r * cols + c0 + c), cols);
                    }
                }
            }
            c0 += 16;
        }
    }
    for c in c0..cols {
        for r in 0..height {
            out[r * cols + c] = unsafe { *src.add(c * ld + r) };
        }
    }
}

/// An 8 x 8 block: 8 floats of 8 source rows `ld` apart into 8 rows of
/// `dst`, `dst_ld` apart. Safety: AVX; both blocks are in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn block8(src: *const f32, ld: usize, dst: *mut f32, dst_ld: usize) {
    use std::arch::x86_64::*;
    let row = |i: usize| unsafe { _mm256_loadu_ps(src.add(i * ld)) };
    let (r0, r1, r2, r3, r4, r5, r6, r7) = (row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7));
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
    let (t0, t1, t2, t3) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1), _mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5, t6, t7) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5), _mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let (s0, s1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xee>(t0, t2));
    let (s2, s3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xee>(t1, t3));
    let (s4, s5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xee>(t4, t6));
    let (s6, s7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xee>(t5, t7));
    let out = [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ];
    for (i, v) in out.into_iter().enumerate() {
        unsafe { _mm256_storeu_ps(dst.add(i * dst_ld), v) };
    }
}

/// A 16 x 16 block, as [`block8`]: rows interleaved in pairs, then in
/// fours, leaving each 128-bit lane of the results four source rows' floats
/// of one column, which two rounds of lane shuffles gather into output rows.
/// Safety: AVX-512 F; both blocks are in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block16(src: *const f32, ld: usize, dst: *mut f32, dst_ld: usize) {
    use std::arch::x86_64::*;
    let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * ld)) });
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
    });
    // u[4g + j], lane L: rows 4g..4g + 4 at column 4L + j.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + j / 2], t[4 * g + j / 2 + 2]);
        if j % 2 == 0 { _mm512_shuffle_ps::<0x44>(a, b) } else { _mm512_shuffle_ps::<0xee>(a, b) }
    });
    for j in 0..4 {
        let (v0, v1) = (_mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]), _mm512_shuffle_f32x4::<0xee>(u[j], u[4 + j]));
        let (w0, w1) = (_mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]), _mm512_shuffle_f32x4::<0xee>(u[8 + j], u[12 + j]));
        let rows = [
            (j, _mm512_shuffle_f32x4::<0x88>(v0, w0)),
            (4 + j, _mm512_shuffle_f32x4::<0xdd>(v0, w0)),
            (8 + j, _mm512_shuffle_f32x4::<0x88>(v1, w1)),
            (12 + j, _mm512_shuffle_f32x4::<0xdd>(v1, w1)),
        ];
        for (row, v) in rows {
            unsafe { _mm512_storeu_ps(dst.add(row * dst_ld), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element lands where the definition says, for shapes with and
    /// without 8 x 8 blocks, strips and tails, and a leading dimension past the row.
    #[test]
    fn each_element_lands_at_its_transposed_place() {
        for (rows, cols, ld) in [(1, 1, 1), (7, 9, 12), (8, 8, 8), (16, 16, 20), (33, 17, 40), (64, 100, 64), (100, 64, 131)] {
            let src: Vec<f32> = (0..cols * ld).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            unsafe { transpose(src.as_ptr(), ld, rows, cols, &mut dst) };
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[r * cols + c], src[c * ld + r], "{rows}x{cols} ld {ld} at ({r}, {c})");
                }
            }
        }
    }
}
