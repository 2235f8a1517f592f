//! Float32, float16 and bfloat16 (the `half` crate's types): conversions among
//! them, and the loads and stores with which the `_ex` ops read half-precision
//! tensors, compute in float32 and write the same type back.
//!
//! To a half type: round to nearest even, overflow to infinity, subnormals
//! exact, signed zeros and infinities kept. NaN stays NaN, quiet, with its sign
//! (and the top bits of its payload) in every direction.

use std::borrow::Cow;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use super::simd::simd;
use rayon::prelude::*;

/// A floating-point data type of the ABI (`CUDANN_F32`, `CUDANN_F16`, `CUDANN_BF16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
    Bf16,
}

/// Runs `$body` with the type alias `$t` naming `$float`'s Rust type.
macro_rules! with_type {
    ($float:expr, $t:ident => $body:expr) => {
        match $float {
            $crate::cpu::convert::Float::F32 => {
                type $t = f32;
                $body
            }
            $crate::cpu::convert::Float::F16 => {
                type $t = half::f16;
                $body
            }
            $crate::cpu::convert::Float::Bf16 => {
                type $t = half::bf16;
                $body
            }
        }
    };
}
pub(crate) use with_type;

/// Elements converted per task (and per stack buffer of [`convert`]).
const CHUNK: usize = 4096;

/// A tensor element the library computes on through float32.
pub trait Element: Copy + Send + Sync + 'static {
    /// The bits of +infinity: a bit pattern is NaN where its magnitude bits are above them.
    const INFINITY_BITS: u32;
    /// `dst[i] = src[i]` as float32 (exact).
    fn load(src: &[Self], dst: &mut [f32]);
    /// `dst[i] = src[i]` rounded to this type.
    fn store(src: &[f32], dst: &mut [Self]);

    /// The elements as float32: borrowed for float32, widened otherwise.
    fn wide(src: &[Self]) -> Cow<'_, [f32]> {
        let mut wide = super::alloc::filled(src.len(), 0.0f32);
        convert(src, &mut wide);
        Cow::Owned(wide)
    }

    /// The elements as float32 to write in place: only float32 ones.
    fn as_f32_mut(_dst: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl Element for f32 {
    const INFINITY_BITS: u32 = 0x7f80_0000;
    fn load(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn store(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn wide(src: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(src)
    }
    fn as_f32_mut(dst: &mut [f32]) -> Option<&mut [f32]> {
        Some(dst)
    }
}

/// A float32 NaN made quiet: widening keeps a signalling NaN's bits otherwise
/// (F16C quiets it, the portable path does not). Branch-free, to vectorise.
#[inline(always)]
fn quiet(bits: u32) -> f32 {
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    f32::from_bits(if nan { bits | 0x0040_0000 } else { bits })
}

#[simd]
fn quiet_nans(x: &mut [f32]) {
    for v in x {
        *v = quiet(v.to_bits());
    }
}

/// A bfloat16's bits as float32 (exact; a NaN made quiet, as every widening
/// does, so ops that read bf16 in registers see the float32 op's inputs).
#[inline(always)]
pub(crate) fn bf16_value(bits: u16) -> f32 {
    quiet((bits as u32) << 16)
}

/// [`bf16_value`] with a signalling NaN left signalling: for callers whose
/// next step is arithmetic, which quiets it to the same bits, or a maximum,
/// which skips NaN, so that quieting first would be wasted work.
#[inline(always)]
pub(crate) fn bf16_unquieted(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[simd]
fn widen_bf16(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_value(s);
    }
}

#[simd]
fn narrow_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s).to_bits();
    }
}

impl Element for f16 {
    const INFINITY_BITS: u32 = 0x7c00;
    fn load(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if f16c() {
            // SAFETY: the CPU has F16C.
            return unsafe { widen_f16_f16c(src.reinterpret_cast(), dst) };
        }
        src.convert_to_f32_slice(dst);
        quiet_nans(dst);
    }
    fn store(src: &[f32], dst: &mut [f16]) {
        #[cfg(target_arch = "x86_64")]
        if f16c() {
            // SAFETY: the CPU has F16C.
            return unsafe { narrow_f16_f16c(src, dst.reinterpret_cast_mut()) };
        }
        // F16C where the CPU has it (vcvtps2ph rounds to nearest even and quiets NaNs).
        dst.convert_from_f32_slice(src);
    }
}

impl Element for bf16 {
    const INFINITY_BITS: u32 = 0x7f80;
    fn load(src: &[bf16], dst: &mut [f32]) {
        widen_bf16(src.reinterpret_cast(), dst);
    }
    fn store(src: &[f32], dst: &mut [bf16]) {
        narrow_bf16(src, dst.reinterpret_cast_mut());
    }
}

/// Round to nearest even on the bits, branch-free so the loop vectorises (the
/// `half` crate's scalar `bf16::from_f32` gives the same bits, with a branch).
#[inline]
pub(crate) fn to_bf16(x: f32) -> bf16 {
    bf16::from_bits((bf16_in_high_half(x) >> 16) as u16)
}

/// [`to_bf16`]'s bits in the high half of a word (the low half is not zeroed):
/// for vector code that puts them there, or shifts them down, at its choice.
#[inline]
fn bf16_in_high_half(x: f32) -> u32 {
    let bits = x.to_bits();
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    // (Chosen in 32 bits, so that vector code narrows once.)
    if nan { bits | 0x0040_0000 } else { bits + 0x7fff + ((bits >> 16) & 1) }
}

/// `dst[i] = src[i]` converted, in parallel chunks (each through a float32
/// buffer on the stack).
pub fn convert<S: Element, D: Element>(src: &[S], dst: &mut [D]) {
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
        let mut wide = [0.0f32; CHUNK];
        let wide = &mut wide[..s.len()];
        S::load(s, wide);
        D::store(wide, d);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_the_half_crate() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..1_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f32::from_bits(state as u32);
            let (ours, theirs) = (to_bf16(x), bf16::from_f32(x));
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{x:e} ({:#010x})", x.to_bits());
        }
    }
}

/// A pointer that may cross to worker threads: each task reads and writes
/// only its own block.
#[derive(Clone, Copy, PartialEq)]
struct Addr(usize);

/// A float32 op applied to half-precision tensors: `inputs` (each `len`
/// elements) and `output` are cut into blocks of whole rows of `cols`, each
/// block widened into float32, computed by `op` (given the index of the
/// block's first element), and rounded back. Blocks run
/// in parallel, each read before it is written, so the output may be one of
/// the inputs (in place). Row ops give each row exactly the float32 op's
/// result, rounded once. Safety: every pointer holds `len` elements of `T`;
/// the output overlaps no input other than being one of them.
pub unsafe fn blockwise<T: Element, const N: usize>(inputs: [*const T; N], output: *mut T, len: usize, cols: usize, op: impl Fn(usize, [&[f32]; N], &mut [f32]) + Sync) {
    if len == 0 {
        return;
    }
    let cols = cols.max(1);
    let rows_per_block = (CHUNK / cols).max(1);
    let block = rows_per_block * cols;
    let (inputs, output) = (inputs.map(|p| Addr(p as usize)), Addr(output as usize));
    for_each_block(len, block, |start, count| {
        let run = |buffer: &mut [f32]| {
            let (wide, result) = buffer.split_at_mut(N * count);
            // SAFETY: this block belongs to this task.
            unsafe { through_f32::<T, N>(inputs, output, start, wide, result, |x, y| op(start, x, y)) };
        };
        super::alloc::with_scratch(&SCRATCH, (N + 1) * count, SCRATCH_KEEP, run);
    });
}

/// Elements `start .. start + result.len()` of each input widened into
/// `wide` (one run of result.len() floats per input), `op` on them into
/// `result`, rounded into the same elements of the output. Each input is read
/// before the output is written, so the output may be one of them. Safety:
/// as [`blockwise`], and no other task touches these elements of the output.
unsafe fn through_f32<T: Element, const N: usize>(inputs: [Addr; N], output: Addr, start: usize, wide: &mut [f32], result: &mut [f32], op: impl FnOnce([&[f32]; N], &mut [f32])) {
    let count = result.len();
    for (w, p) in wide.chunks_exact_mut(count).zip(inputs) {
        // SAFETY: these elements of an input, dropped before the output's are borrowed.
        T::load(unsafe { std::slice::from_raw_parts((p.0 as *const T).add(start), count) }, w);
    }
    let mut runs = wide.chunks_exact(count);
    op(std::array::from_fn(|_| runs.next().expect("N runs")), result);
    T::store(result, unsafe { std::slice::from_raw_parts_mut((output.0 as *mut T).add(start), count) });
}

/// Calls `f(start, count)` for the blocks of `block` elements of `0..len`, in
/// parallel. Each task takes a span of consecutive blocks, so every thread
/// streams through memory in order (the prefetchers follow it).
fn for_each_block(len: usize, block: usize, f: impl Fn(usize, usize) + Sync) {
    let blocks = len.div_ceil(block);
    let span = (SPAN / block).max(1);
    (0..blocks.div_ceil(span)).into_par_iter().flat_map_iter(|s| s * span..blocks.min((s + 1) * span)).for_each(|b| {
        f(b * block, block.min(len - b * block));
    });
}

/// Elements of consecutive blocks per task.
const SPAN: usize = 64 * 1024;

/// `y[i] = f(inputs[i])` on bfloat16 bits in one pass, `f` a single
/// arithmetic operation: each element widened in a register, computed and
/// rounded once. The widening is [`bf16_unquieted`]: which of two NaN
/// operands the operation returns does not depend on whether they were quiet.
///
/// Two elements a 32-bit word: the low one widened by a shift and the high
/// one by a mask, each computed and rounded in 32 bits, and the two halves
/// put back together: no vector widening or narrowing instructions
/// (`vpmovzxwd`, `vpmovdw`: several operations each, on one port).
#[simd]
pub(crate) fn map_bf16_block<const N: usize, F: Fn([f32; N]) -> f32>(inputs: [&[u16]; N], y: &mut [u16], f: &F) {
    let inputs = inputs.map(|x| &x[..y.len()]);
    let pairs = y.len() / 2;
    // SAFETY (of the reads and writes): word p covers elements 2p and 2p + 1 < y.len().
    let word = |x: &[u16], p: usize| u32::from_le(unsafe { x.as_ptr().add(2 * p).cast::<u32>().read_unaligned() });
    for p in 0..pairs {
        let words = inputs.map(|x| word(x, p));
        let low = bf16_in_high_half(f(words.map(|w| f32::from_bits(w << 16)))) >> 16;
        let high = bf16_in_high_half(f(words.map(|w| f32::from_bits(w & 0xffff_0000)))) & 0xffff_0000;
        unsafe { y.as_mut_ptr().add(2 * p).cast::<u32>().write_unaligned((high | low).to_le()) };
    }
    if y.len() % 2 == 1 {
        let i = y.len() - 1;
        y[i] = to_bf16(f(inputs.map(|x| bf16_unquieted(x[i])))).to_bits();
    }
}

/// Whether float16 converts through F16C's instructions here: at the AVX
/// levels, which have F16C (the scalar level takes the `half` crate's
/// portable conversions).
pub(crate) fn f16c() -> bool {
    cfg!(target_arch = "x86_64") && super::simd::level() >= super::simd::Level::Avx2
}

/// Eight float16 bits widened by `vcvtph2ps`, which quiets a NaN itself (as
/// `Element::load` must). Safety: the CPU has F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn widen8(h: &[u16; 8]) -> [f32; 8] {
    use std::arch::x86_64::*;
    let mut w = [0.0f32; 8];
    // SAFETY: 8 elements each side.
    unsafe { _mm256_storeu_ps(w.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()))) };
    w
}

/// Eight floats rounded to float16 by `vcvtps2ph`: to nearest even, NaNs
/// quiet (`Element::store`'s rounding). Safety: the CPU has F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn narrow8(w: &[f32; 8]) -> [u16; 8] {
    use std::arch::x86_64::*;
    let mut h = [0u16; 8];
    // SAFETY: 8 elements each side.
    unsafe { _mm_storeu_si128(h.as_mut_ptr().cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(w.as_ptr()))) };
    h
}

/// `Element::load` of float16 by [`widen8`]: one pass (the portable path
/// quiets NaNs in a second). Safety: the CPU has F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
    by_eights(src, dst, |h, w| *w = unsafe { widen8(h) });
}

/// `Element::store` to float16 by [`narrow8`], inline (the `half` crate
/// calls a function per 8 elements). Safety: the CPU has F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn narrow_f16_f16c(src: &[f32], dst: &mut [u16]) {
    by_eights(src, dst, |w, h| *h = unsafe { narrow8(w) });
}

/// `convert` on each run of 8 of `src` into the same run of `dst`; the last
/// few through a padded run, by the same conversion.
#[inline(always)]
fn by_eights<S: Copy + Default, D: Copy + Default>(src: &[S], dst: &mut [D], convert: impl Fn(&[S; 8], &mut [D; 8])) {
    let mut runs = src.chunks_exact(8);
    let mut outs = dst[..src.len()].chunks_exact_mut(8);
    for (s, d) in (&mut runs).zip(&mut outs) {
        convert(s.try_into().expect("8"), d.try_into().expect("8"));
    }
    let tail = runs.remainder();
    let (mut s, mut d) = ([S::default(); 8], [D::default(); 8]);
    s[..tail.len()].copy_from_slice(tail);
    convert(&s, &mut d);
    outs.into_remainder().copy_from_slice(&d[..tail.len()]);
}

/// [`map_bf16_block`] on float16 bits: each element widened by F16C's
/// `vcvtph2ps` (which quiets a NaN, as `Element::load`), computed and rounded
/// once by `vcvtps2ph` to nearest even (`Element::store`'s), eight at a time,
/// the last few as a padded run. Only where [`f16c`].
pub(crate) fn map_f16_block<const N: usize, F: Fn([f32; N]) -> f32>(inputs: [&[u16]; N], y: &mut [u16], f: &F) {
    assert!(f16c(), "float16 maps need F16C");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the AVX levels have F16C, and the level never exceeds the CPU's.
    unsafe {
        map_f16_f16c(inputs.map(|x| &x[..y.len()]), y, f)
    }
}

/// [`map_f16_block`]. Safety: the CPU has AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn map_f16_f16c<const N: usize, F: Fn([f32; N]) -> f32>(inputs: [&[u16]; N], y: &mut [u16], f: &F) {
    let eight = |h: [&[u16; 8]; N]| {
        let wide = h.map(|h| unsafe { widen8(h) });
        unsafe { narrow8(&std::array::from_fn(|lane| f(wide.map(|w| w[lane])))) }
    };
    let at = y.len() / 8 * 8;
    let mut runs = y.chunks_exact_mut(8);
    for (i, y) in (&mut runs).enumerate() {
        y.copy_from_slice(&eight(inputs.map(|x| x[i * 8..i * 8 + 8].try_into().expect("8"))));
    }
    let tail = runs.into_remainder();
    let padded = inputs.map(|x| {
        let mut h = [0u16; 8];
        h[..tail.len()].copy_from_slice(&x[at..]);
        h
    });
    tail.copy_from_slice(&eight(std::array::from_fn(|i| &padded[i]))[..tail.len()]);
}

/// Whether some element is NaN (half bits; `infinity` as `Element::INFINITY_BITS`).
#[simd]
fn any_nan(x: &[u16], infinity: u16) -> bool {
    x.iter().fold(false, |found, &x| found | (x & 0x7fff > infinity))
}

/// Whether some element is NaN in every input (half bits, as [`any_nan`]).
#[simd]
fn nan_in_every<const N: usize>(inputs: [&[u16]; N], infinity: u16) -> bool {
    let len = inputs[0].len();
    let inputs = inputs.map(|x| &x[..len]);
    (0..len).fold(false, |found, i| found | inputs.iter().all(|x| x[i] & 0x7fff > infinity))
}

/// Elements of each input [`elementwise`] widens at a time: small enough
/// that the next tile's loads overlap this tile's arithmetic (bf16 SwiGLU on
/// 2 threads: 10.1 ms in widened blocks of 16384, 7.5 ms in tiles of 256,
/// 8.2 in tiles of 1024, 10.4 in tiles of 64).
pub(crate) const TILE: usize = 256;

/// A float32 elementwise kernel applied to `len` elements of each input into
/// `output`, which may be one of them: each result is the kernel on the
/// inputs widened to float32, rounded once. A half type with a `half_block`
/// kernel (on the bits of a block of each input, with the float32 op's bits:
/// for bfloat16, [`map_bf16_block`] with the op's per-element expression, a
/// single arithmetic operation) runs in one pass (memory-bound: half the
/// bytes of float32); otherwise `kernel` (the float32 op's loop on slices of
/// any length) runs on tiles widened on the stack, each read before it is
/// written. Only the float32 op's own compiled loop gives a NaN result its
/// very sign and payload in longer expressions, and in an operation on two
/// NaNs (x86 returns its first operand's, and the compiler may swap the
/// operands; bf16 add's scalar tail did): a block whose result holds a NaN
/// where every input is NaN runs the tiles again. Safety: as [`blockwise`].
pub unsafe fn elementwise<T: Element, const N: usize>(inputs: [*const T; N], output: *mut T, len: usize, half_block: Option<impl Fn([&[u16]; N], &mut [u16]) + Sync>, kernel: impl Fn([&[f32]; N], &mut [f32]) + Sync) {
    let (inputs, output) = (inputs.map(|p| Addr(p as usize)), Addr(output as usize));
    let Some(half_block) = half_block.filter(|_| size_of::<T>() == 2) else {
        // SAFETY: each block belongs to its task.
        return for_each_block(len, CHUNK, |start, count| unsafe { tiles::<T, N>(inputs, output, start, count, &kernel) });
    };
    let aliased = inputs.contains(&output);
    for_each_block(len, CHUNK, |start, count| {
        // SAFETY: T is a half type (u16 bits); these blocks lie inside the inputs.
        let blocks: [&[u16]; N] = std::array::from_fn(|i| unsafe { std::slice::from_raw_parts((inputs[i].0 as *const u16).add(start), count) });
        let run = |y: &mut [u16]| {
            half_block(blocks, y);
            // (The result, still in L1, is checked first: NaNs are rare.)
            let infinity = T::INFINITY_BITS as u16;
            if N > 1 && any_nan(y, infinity) && nan_in_every(blocks, infinity) {
                // SAFETY: the blocks hold `count` elements, and `y` is none of them.
                unsafe { tiles::<T, N>(blocks.map(|b| Addr(b.as_ptr() as usize)), Addr(y.as_mut_ptr() as usize), 0, count, &kernel) };
            }
        };
        // SAFETY: this block of the output belongs to this task; it is borrowed
        // only where no input's block is read after.
        let y = || unsafe { std::slice::from_raw_parts_mut((output.0 as *mut u16).add(start), count) };
        if aliased {
            // The result goes to the stack first (in place, the kernel reads
            // the very elements it would overwrite), then over the block, in L1.
            let mut result = [0u16; CHUNK];
            run(&mut result[..count]);
            y().copy_from_slice(&result[..count]);
        } else {
            run(y());
        }
    });
}

/// `kernel` on elements `start .. start + count` of the inputs, through
/// float32 tiles of [`TILE`] on the stack. Safety: as [`through_f32`].
unsafe fn tiles<T: Element, const N: usize>(inputs: [Addr; N], output: Addr, start: usize, count: usize, kernel: &impl Fn([&[f32]; N], &mut [f32])) {
    let (mut wide, mut result) = ([[0.0f32; TILE]; N], [0.0f32; TILE]);
    for at in (start..start + count).step_by(TILE) {
        let m = TILE.min(start + count - at);
        // SAFETY: as the caller's.
        unsafe { through_f32::<T, N>(inputs, output, at, &mut wide.as_flattened_mut()[..N * m], &mut result[..m], kernel) };
    }
}

/// Floats of scratch a worker keeps between calls (256 KiB).
pub(crate) const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// Each worker's float32 blocks for [`blockwise`] (at most a few blocks of
    /// CHUNK floats, unless one row is longer).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `len` elements of `T` at `ptr`, widened into a new float32 buffer.
/// Safety: `ptr` holds `len` elements.
pub unsafe fn widened<T: Element>(ptr: *const T, len: usize) -> Vec<f32> {
    T::wide(unsafe { std::slice::from_raw_parts(ptr, len) }).into_owned()
}
