//! GEMM.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, Region, require};
use crate::cpu::convert::{self, Element, Float, with_type};
use crate::cpu::gemm::{self, View};
use crate::cpu::skinny;
use crate::dispatch::{self, Call};
use crate::gpu::widen::Use;
use crate::error::{Result, invalid};
use crate::gpu::driver::{self, DevPtr, Stream};
use crate::gpu::Gpu;
use crate::gpu::{blas, ops};

/// Row-major `C[M,N] = alpha * A[M,K] * B[K,N] + beta * C`. With `beta == 0`,
/// `C` is not read (it may hold NaN). `C` may be `A`'s or `B`'s very buffer.
/// Returns -2 for NULL pointers with a non-empty shape, negative or overflowing
/// dimensions, or overlaps.
#[unsafe(no_mangle)]
#[allow(non_snake_case)] // the ABI names the matrices A, B, C and their sizes M, N, K
pub unsafe extern "C" fn cuda_gemm(
    A: *const f32,
    B: *const f32,
    C: *mut f32,
    M: c_int,
    N: c_int,
    K: c_int,
    alpha: f32,
    beta: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_gemm", {
        unsafe { batched(A, B, C, 1, M, N, K, alpha, beta, stream) }
    })
}

/// `batch` independent row-major GEMMs as `cuda_gemm`, over contiguous matrices
/// with strides `M*K` (A), `K*N` (B) and `M*N` (C). Returns -2 as `cuda_gemm`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuda_gemm_batched(
    A: *const f32,
    B: *const f32,
    C: *mut f32,
    batch: c_int,
    M: c_int,
    N: c_int,
    K: c_int,
    alpha: f32,
    beta: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_gemm_batched", {
        unsafe { batched(A, B, C, batch, M, N, K, alpha, beta, stream) }
    })
}

/// The shared body of both GEMM entry points.
#[allow(non_snake_case)]
unsafe fn batched(
    A: *const f32,
    B: *const f32,
    C: *mut f32,
    batch: c_int,
    M: c_int,
    N: c_int,
    K: c_int,
    alpha: f32,
    beta: f32,
    stream: *mut c_void,
) -> crate::error::Result<()> {
    let batch = check::dim("batch", batch)?;
    let (m, n, k) = (check::dim("M", M)?, check::dim("N", N)?, check::dim("K", K)?);
    let c_len = check::elements(&[("batch", batch), ("M", m), ("N", n)])?;
    let (a_len, b_len) = if c_len == 0 {
        (0, 0) // nothing to compute: A and B are not read
    } else {
        (check::elements(&[("batch", batch), ("M", m), ("K", k)])?, check::elements(&[("batch", batch), ("K", k), ("N", n)])?)
    };
    let a = Input::new("A", A, a_len)?;
    let b = Input::new("B", B, b_len)?;
    let c = Output::new("C", C, c_len)?;
    let flops = 2.0 * c_len as f64 * k as f64;
    let call = Call::new(stream, c_len, [a.region(), b.region(), c.region()])?.flops(flops).kernels_in_place(false);
    dispatch::run(
        &call,
        || unsafe { gemm::sgemm_batched(&a.read(&[c.region()]), &b.read(&[c.region()]), c.slice(), m, n, k, alpha, beta) },
        |g, p| unsafe { ops::sgemm(g, stream.cast(), p[0], p[1], p[2], batch, m, n, k, alpha, beta) },
    )
}

/// One operand of `cudann_gemm_ex`: a batch of row-major `rows x cols` matrices
/// (as stored, before any transpose), `ld` elements between rows and `stride`
/// between matrices.
#[derive(Clone, Copy)]
struct Strided {
    rows: usize,
    cols: usize,
    ld: usize,
    stride: usize,
}

impl Strided {
    /// Checks `ld >= cols` and `stride >= 0`, named after the matrix.
    fn new(matrix: &str, rows: usize, cols: usize, ld: i64, stride: i64) -> Result<Self> {
        let name = matrix.to_lowercase();
        let row = cols.max(1);
        let valid_ld = usize::try_from(ld).ok().filter(|&ld| ld >= row);
        let ld = valid_ld.ok_or_else(|| invalid(format!("ld{name} must be >= {row} (a stored row of {matrix}) (got {ld})")))?;
        let stride = usize::try_from(stride).map_err(|_| invalid(format!("stride_{name} must be >= 0 (got {stride})")))?;
        Ok(Strided { rows, cols, ld, stride })
    }

    /// Elements from the first matrix's first element to the last matrix's
    /// last: `(batch-1)*stride + (rows-1)*ld + cols`; -2 past 2^60.
    fn span(&self, matrix: &str, batch: usize) -> Result<usize> {
        if batch == 0 || self.rows == 0 || self.cols == 0 {
            return Ok(0);
        }
        let span = ((batch - 1) as u128) * self.stride as u128 + ((self.rows - 1) as u128) * self.ld as u128 + self.cols as u128;
        let span = usize::try_from(span).unwrap_or(usize::MAX);
        check::elements(&[(matrix, span)])
    }

    /// Elements one matrix spans (`(rows-1)*ld + cols`).
    fn one(&self) -> usize {
        if self.rows == 0 { 0 } else { (self.rows - 1) * self.ld + self.cols }
    }
}

/// The checked transposes, sizes, types and layouts of cudann_gemm_ex's and
/// cudann_gemm_grouped's three matrices.
struct Matrices {
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    types: [Float; 3],
    sa: Strided,
    sb: Strided,
    sc: Strided,
}

impl Matrices {
    fn check([trans_a, trans_b]: [c_int; 2], [m, n, k]: [c_int; 3], [a_type, b_type, c_type]: [c_int; 3], [lda, ldb, ldc]: [i64; 3], [stride_a, stride_b, stride_c]: [i64; 3]) -> Result<Self> {
        let (ta, tb) = (check::flag("trans_a", trans_a)?, check::flag("trans_b", trans_b)?);
        let (m, n, k) = (check::dim("m", m)?, check::dim("n", n)?, check::dim("k", k)?);
        let types = [check::float_type("a_type", a_type)?, check::float_type("b_type", b_type)?, check::float_type("c_type", c_type)?];
        let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
        let sa = Strided::new("A", a_rows, a_cols, lda, stride_a)?;
        let sb = Strided::new("B", b_rows, b_cols, ldb, stride_b)?;
        let sc = Strided::new("C", m, n, ldc, stride_c)?;
        Ok(Matrices { ta, tb, m, n, k, types, sa, sb, sc })
    }
}

/// Batched strided row-major GEMM with a data type per matrix:
/// `C_i = alpha * op(A_i) * op(B_i) + beta * C_i` for `i < batch`, `op(X)` is
/// `X` (`trans_x = 0`) or `Xᵀ` (`trans_x = 1`); `op(A_i)` is `m x k`, `op(B_i)`
/// is `k x n`, `C_i` is `m x n`. `A_i` starts at `A + i*stride_a` and is stored
/// row-major with `lda` elements between rows (`m x k`, `lda >= k`, or, when
/// transposed, `k x m`, `lda >= m`); likewise `B` (`k x n` or `n x k`) and `C`
/// (`ldc >= n`). Leading dimensions and strides count elements; a stride of 0
/// reuses one matrix for every batch entry (not for `C` when `batch > 1`: the
/// `C_i` must not overlap, `stride_c >= (m-1)*ldc + n`). With `beta == 0`, `C`
/// is not read. Each of `a_type`, `b_type`, `c_type` is `CUDANN_F32`,
/// `CUDANN_F16` or `CUDANN_BF16`; products accumulate in float32 (a half `C` is
/// rounded once, its row gaps untouched). `C` may be exactly `A`'s or `B`'s
/// span (in place, computed from the old values); any other overlap is -2. In
/// float32 on the GPU it runs on cuBLAS (FP32, or TF32 with
/// `CUDANN_ALLOW_TF32=1`); so do `A` and `B` of one half type with `C` float32
/// or that type (`cublasGemmStridedBatchedEx`, float32 accumulation), and a
/// float32 `C` with one half type among `A` and `B` (a float32 copy of the half
/// operand, then the float32 product). Other mixes of types (a half `C` with
/// `A` and `B` of different types, or f16 with bf16) run on the CPU (device
/// pointers: -1).
#[unsafe(no_mangle)]
#[allow(non_snake_case)] // the matrices are A, B, C as in BLAS
pub unsafe extern "C" fn cudann_gemm_ex(
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    A: *const c_void,
    a_type: c_int,
    lda: i64,
    stride_a: i64,
    B: *const c_void,
    b_type: c_int,
    ldb: i64,
    stride_b: i64,
    beta: f32,
    C: *mut c_void,
    c_type: c_int,
    ldc: i64,
    stride_c: i64,
    batch: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_gemm_ex", {
        let Matrices { ta, tb, m, n, k, types, sa, sb, sc } = Matrices::check([trans_a, trans_b], [m, n, k], [a_type, b_type, c_type], [lda, ldb, ldc], [stride_a, stride_b, stride_c])?;
        let batch = check::dim("batch", batch)?;
        require(batch <= 1 || sc.stride >= sc.one(), || {
            format!("stride_c must be >= (m-1)*ldc + n = {} when batch > 1 (the C matrices may not overlap) (got {})", sc.one(), sc.stride)
        })?;
        let c_len = sc.span("C", batch)?;
        // Nothing to compute (or no product term): A and B are not read.
        let reads = c_len > 0 && k > 0;
        let (a_len, b_len) = if reads { (sa.span("A", batch)?, sb.span("B", batch)?) } else { (0, 0) };
        let flops = 2.0 * (batch * m * n) as f64 * k as f64;
        let shape = Shape { batch, m, n, k, alpha, beta, a: (ta, sa), b: (tb, sb), c: sc, lens: [a_len, b_len, c_len] };
        let operand = |ptr, s: &Strided, trans| blas::Operand { ptr, trans, ld: s.ld, stride: s.stride };
        if types != [Float::F32; 3] {
            let regions = [region("A", A, types[0], a_len, false)?, region("B", B, types[1], b_len, false)?, region("C", C, types[2], c_len, true)?];
            let call = Call::new(stream, c_len, regions)?.flops(flops).kernels_in_place(false);
            let cpu = || unsafe { mixed(&shape, types, A, B, C) };
            let gpu = |half, p: &[DevPtr]| unsafe { ops::gemm_ex(stream.cast(), operand(p[0], &sa, ta), operand(p[1], &sb, tb), operand(p[2], &sc, false), half, batch, m, n, k, alpha, beta) };
            if let Some(half) = ops::half_types(types) {
                return dispatch::run(&call, cpu, |_, p| gpu(Some(half), p));
            }
            // A float32 C with one half type among A and B (decoding's float32
            // activations times half weights): the float32 product of a
            // float32 copy of the half operand.
            if let [Float::F32, half, Float::F32] | [half, Float::F32, Float::F32] = types {
                let use_of = |t| if t == Float::F32 { Use::Keep } else { Use::In };
                return dispatch::run_typed(half, &call, [use_of(types[0]), use_of(types[1]), Use::Keep], cpu, |_, p| gpu(None, p));
            }
            return dispatch::run_cpu_only(&call, cpu);
        }
        let a = Input::new("A", A.cast::<f32>(), a_len)?;
        let b = Input::new("B", B.cast::<f32>(), b_len)?;
        let c = Output::new("C", C.cast::<f32>(), c_len)?;
        // cuBLAS does not compute in place: an aliased A or B is copied first.
        let call = Call::new(stream, c_len, [a.region(), b.region(), c.region()])?.flops(flops).kernels_in_place(false);
        let gpu = |_: &_, p: &[DevPtr]| unsafe { ops::gemm_ex(stream.cast(), operand(p[0], &sa, ta), operand(p[1], &sb, tb), operand(p[2], &sc, false), None, batch, m, n, k, alpha, beta) };
        dispatch::run(&call, || unsafe { shape.run(a.read(&[c.region()]).as_ptr(), b.read(&[c.region()]).as_ptr(), c.ptr) }, gpu)
    })
}

/// Grouped products at least this large (2 m n k) run on cuBLAS, a product a
/// group, after reading the offsets to the host, unless the stream is being
/// captured: the grouped kernel reaches 0.6-0.8x cuBLAS there (H100), while
/// the round trip costs tens of microseconds against hundreds for the
/// products. Smaller ones are launch-bound on cuBLAS: the kernel is up to 3x
/// faster.
const GROUPED_ON_BLAS_FLOPS: f64 = 4e9;

/// Grouped products, as `cudann_gemm_ex` with `batch` replaced by `groups`
/// groups over a partition of one dimension: group `g` covers indices
/// `offsets[g] .. offsets[g+1]` of `m` (`group_inner = 0`: rows) or of `k`
/// (`group_inner = 1`), with its matrices at `A + g*stride_a`, `B + g*stride_b`,
/// `C + g*stride_c` (`A_g`, `B_g`, `C_g`). Rows: `C_g[r, :] = alpha *
/// op(A_g)[r, :] * op(B_g) + beta * C_g[r, :]` for the rows `r` of group `g`;
/// other rows of C are not written. Inner: `C_g = alpha * op(A_g)[:, r] *
/// op(B_g)[r, :] + beta * C_g` summed over the indices `r` of group `g`, for
/// every group (an empty one writes `beta * C_g`). This is a mixture of
/// experts' layers: the rows dispatched to expert `g` times its weights
/// (`stride_b` apart), and each expert's weight gradient (`stride_c` apart).
/// `offsets` (`groups + 1` int32, not decreasing, within `[0, m]` or `[0, k]`)
/// is read where the call runs, so with device pointers the product needs no
/// host round trip (a step can be captured into a CUDA graph); where the host
/// can read it, offsets out of order or range are -2. On the GPU, float32
/// operands run a kernel of its own (offsets clamped into range, an end
/// before its start an empty group), except products of at least 4e9 flops
/// (`2*m*n*k`) outside a graph capture: their offsets are read to the host
/// (waiting for the stream) and each group runs on cuBLAS. A float32 `C` with
/// one half type among `A` and `B` runs on a float32 copy of the half operand;
/// other mixes run on the CPU (device pointers: -1). `C` may not overlap `A` or `B`; the `C_g`
/// may not overlap each other where they are written (`stride_c` 0 with rows
/// grouped, or at least `(m-1)*ldc + n`). Returns -2 as `cudann_gemm_ex`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)] // the matrices are A, B, C as in BLAS
pub unsafe extern "C" fn cudann_gemm_grouped(
    trans_a: c_int,
    trans_b: c_int,
    group_inner: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    A: *const c_void,
    a_type: c_int,
    lda: i64,
    stride_a: i64,
    B: *const c_void,
    b_type: c_int,
    ldb: i64,
    stride_b: i64,
    beta: f32,
    C: *mut c_void,
    c_type: c_int,
    ldc: i64,
    stride_c: i64,
    offsets: *const i32,
    groups: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_gemm_grouped", {
        let Matrices { ta, tb, m, n, k, types, sa, sb, sc } = Matrices::check([trans_a, trans_b], [m, n, k], [a_type, b_type, c_type], [lda, ldb, ldc], [stride_a, stride_b, stride_c])?;
        let inner = check::flag("group_inner", group_inner)?;
        let groups = check::dim("groups", groups)?;
        require(groups <= 1 || (!inner && sc.stride == 0) || sc.stride >= sc.one(), || {
            format!("stride_c must be >= (m-1)*ldc + n = {} (the groups' C may not overlap){} (got {})", sc.one(), if inner { "" } else { ", or 0" }, sc.stride)
        })?;
        let c_len = sc.span("C", groups)?;
        let reads = c_len > 0 && k > 0;
        let (a_len, b_len) = if reads { (sa.span("A", groups)?, sb.span("B", groups)?) } else { (0, 0) };
        let off = Input::new("offsets", offsets, if c_len > 0 { groups + 1 } else { 0 })?;
        // SAFETY: host memory of groups + 1 elements (empty for device memory).
        offsets_in_order(unsafe { off.host_view() }, if inner { ("k", k) } else { ("m", m) })?;
        let regions = [region("A", A, types[0], a_len, false)?, region("B", B, types[1], b_len, false)?, region("C", C, types[2], c_len, true)?, off.region()];
        require(!regions[..2].iter().any(|r| r.bytes > 0 && c_len > 0 && r.start == C as usize), || "C may not be A or B in a grouped product".to_string())?;
        let call = Call::new(stream, c_len, regions)?.flops(2.0 * (m * n) as f64 * k as f64);
        let shape = Shape { batch: groups, m, n, k, alpha, beta, a: (ta, sa), b: (tb, sb), c: sc, lens: [a_len, b_len, c_len] };
        let cpu = || unsafe { grouped_on_cpu(&shape, inner, types, off.slice(), [A, B, C.cast_const()]) };
        let gpu = |g: &_, p: &[DevPtr]| unsafe { grouped_on_gpu(g, stream.cast(), &shape, inner, p) };
        match types {
            [Float::F32, Float::F32, Float::F32] => dispatch::run(&call, cpu, gpu),
            [Float::F32, half, Float::F32] | [half, Float::F32, Float::F32] => {
                let use_of = |t| if t == Float::F32 { Use::Keep } else { Use::In };
                dispatch::run_typed(half, &call, [use_of(types[0]), use_of(types[1]), Use::Keep, Use::Keep], cpu, gpu)
            }
            _ => dispatch::run_cpu_only(&call, cpu),
        }
    })
}

/// -2 naming the first entry of host-readable `offsets` outside `[0, dim]` or
/// less than the one before it (`name`, `dim`: the grouped dimension).
fn offsets_in_order(offsets: &[i32], (name, dim): (&str, usize)) -> Result<()> {
    for (i, &o) in offsets.iter().enumerate() {
        require(o >= 0 && o as usize <= dim, || format!("offsets[{i}] = {o} is outside [0, {name} = {dim}]"))?;
        require(i == 0 || o >= offsets[i - 1], || format!("offsets[{i}] = {o} is less than offsets[{}] = {} (offsets may not decrease)", i - 1, offsets[i - 1]))?;
    }
    Ok(())
}

/// A checked cudann_gemm_grouped call on the CPU: each of `shape.batch`
/// groups (over `offsets`) through cudann_gemm_ex's paths. Safety: the call's
/// checked buffers `[A, B, C]`.
unsafe fn grouped_on_cpu(shape: &Shape, inner: bool, types: [Float; 3], offsets: &[i32], [a, b, c]: [*const c_void; 3]) {
    for g in 0..shape.batch {
        let (lo, hi) = (offsets[g] as usize, offsets[g + 1] as usize);
        if hi == lo && !inner {
            continue; // no rows
        }
        let (part, at) = shape.group(inner, g, lo, hi);
        let (a, b, c) = (element(a, types[0], at[0]), element(b, types[1], at[1]), element(c, types[2], at[2]).cast_mut());
        if types == [Float::F32; 3] {
            unsafe { part.run(a.cast(), b.cast(), c.cast()) };
        } else {
            unsafe { mixed(&part, types, a, b, c) };
        }
    }
}

/// A checked cudann_gemm_grouped call on float32 device buffers `p` (A, B, C,
/// offsets): the grouped kernel, or, for products of at least
/// [`GROUPED_ON_BLAS_FLOPS`] outside a capture, cuBLAS per group after the
/// offsets are read (clamped as the kernel clamps them). Safety: the call's
/// checked device buffers.
unsafe fn grouped_on_gpu(g: &Gpu, s: Stream, shape: &Shape, inner: bool, p: &[DevPtr]) -> Result<()> {
    let Shape { batch: groups, m, n, k, alpha, beta, a: (ta, sa), b: (tb, sb), c: sc, .. } = *shape;
    let operand = |ptr, s: &Strided, trans| blas::Operand { ptr, trans, ld: s.ld, stride: s.stride };
    if 2.0 * (m * n) as f64 * k as f64 >= GROUPED_ON_BLAS_FLOPS && blas::available() && unsafe { driver::may_sync(s) } {
        let dim = if inner { k } else { m } as i32;
        let offsets = unsafe { driver::read_i32s(s, p[3], groups + 1)? };
        for (group, pair) in offsets.windows(2).enumerate() {
            let lo = pair[0].clamp(0, dim) as usize;
            let (part, at) = shape.group(inner, group, lo, (pair[1].clamp(0, dim) as usize).max(lo));
            let ((pta, psa), (ptb, psb)) = (part.a, part.b);
            let from = |i: usize| p[i] + (at[i] * 4) as DevPtr;
            if part.m > 0 {
                unsafe { ops::gemm_ex(s, operand(from(0), &psa, pta), operand(from(1), &psb, ptb), operand(from(2), &part.c, false), None, 1, part.m, n, part.k, alpha, beta)? };
            }
        }
        return Ok(());
    }
    unsafe { ops::gemm_grouped(g, s, operand(p[0], &sa, ta), operand(p[1], &sb, tb), operand(p[2], &sc, false), p[3], groups, inner, m, n, k, alpha, beta) }
}

/// A checked cudann_gemm_ex problem.
struct Shape {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    a: (bool, Strided),
    b: (bool, Strided),
    c: Strided,
    /// Elements of A, B and C the call reads or writes (A and B: 0 when unread).
    lens: [usize; 3],
}

impl Shape {
    /// Group `g` of a grouped product (indices `lo .. hi` of its grouped
    /// dimension) as a problem of batch 1, with where its A, B and C start
    /// (elements from the call's pointers).
    fn group(&self, inner: bool, g: usize, lo: usize, hi: usize) -> (Shape, [usize; 3]) {
        let ((ta, mut sa), (tb, mut sb), mut sc) = (self.a, self.b, self.c);
        let mut at = [g * sa.stride, g * sb.stride, g * sc.stride];
        let (mut m, mut k) = (self.m, self.k);
        // The grouped dimension's range, in the stored matrices: m is A's and
        // C's rows (A's columns when transposed), k A's columns and B's rows.
        let slice = |s: &mut Strided, at: &mut usize, along_rows: bool| {
            if along_rows {
                *at += lo * s.ld;
                s.rows = hi - lo;
            } else {
                *at += lo;
                s.cols = hi - lo;
            }
        };
        if inner {
            k = hi - lo;
            slice(&mut sa, &mut at[0], ta);
            slice(&mut sb, &mut at[1], !tb);
        } else {
            m = hi - lo;
            slice(&mut sa, &mut at[0], !ta);
            slice(&mut sc, &mut at[2], true);
        }
        let reads = m > 0 && self.n > 0 && k > 0;
        let lens = [if reads { sa.one() } else { 0 }, if reads { sb.one() } else { 0 }, sc.one()];
        (Shape { batch: 1, m, n: self.n, k, alpha: self.alpha, beta: self.beta, a: (ta, sa), b: (tb, sb), c: sc, lens }, at)
    }

    /// Every product on float32 spans. Safety: `a`, `b`, `c` hold their spans.
    unsafe fn run(&self, a: *const f32, b: *const f32, c: *mut f32) {
        let ((ta, sa), (tb, sb), sc) = (self.a, self.b, self.c);
        for i in 0..self.batch {
            let av = View::new(a.wrapping_add(i * sa.stride), sa.ld, ta);
            let bv = View::new(b.wrapping_add(i * sb.stride), sb.ld, tb);
            let cv = View::new(c.wrapping_add(i * sc.stride), sc.ld, false);
            unsafe { gemm::sgemm_view(av, bv, cv, self.m, self.n, self.k, self.alpha, self.beta) };
        }
    }
}

/// `ptr` advanced by `elements` of type `t`.
fn element(ptr: *const c_void, t: Float, elements: usize) -> *const c_void {
    with_type!(t, T => ptr.cast::<T>().wrapping_add(elements).cast())
}

/// An operand's bytes for the overlap checks, its pointer checked for its type.
fn region(name: &'static str, ptr: *const c_void, t: Float, len: usize, written: bool) -> Result<Region> {
    with_type!(t, T => if written { Output::new(name, ptr.cast::<T>().cast_mut(), len).map(|o| o.region()) } else { Input::new(name, ptr.cast::<T>(), len).map(|i| i.region()) })
}

/// bfloat16 A and B with more rows than the skinny kernel takes, on a CPU
/// with AMX or (AMD) AVX512-BF16: the products straight from the bf16 bits
/// (see `cpu::gemm_bf16`); false (nothing done) otherwise. Safety: as [`mixed`].
#[cfg(target_arch = "x86_64")]
unsafe fn bf16_kernel(shape: &Shape, types: [Float; 2], a: *const c_void, b: *const c_void, c: *mut f32) -> bool {
    if types != [Float::Bf16; 2] || shape.m <= skinny::MAX_ROWS || shape.k == 0 {
        return false;
    }
    let Some(kernel) = crate::cpu::gemm_bf16::kernel() else { return false };
    let ((ta, sa), (tb, sb), sc) = (shape.a, shape.b, shape.c);
    for i in 0..shape.batch {
        let av = View::new(a.cast::<u16>().wrapping_add(i * sa.stride), sa.ld, ta);
        let bv = View::new(b.cast::<u16>().wrapping_add(i * sb.stride), sb.ld, tb);
        let cv = View::new(c.wrapping_add(i * sc.stride), sc.ld, false);
        unsafe { kernel.gemm(av, bv, cv, shape.m, shape.n, shape.k, shape.alpha, shape.beta) };
    }
    true
}

/// Off x86-64 there is no bf16 kernel.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn bf16_kernel(_: &Shape, _: [Float; 2], _: *const c_void, _: *const c_void, _: *mut f32) -> bool {
    false
}

/// `len` elements of type `t` at `ptr`, widened to float32 (a copy, so C may
/// alias them). Safety: the caller's buffer of that size.
unsafe fn widened(ptr: *const c_void, t: Float, len: usize) -> Vec<f32> {
    with_type!(t, T => unsafe { convert::widened(ptr.cast::<T>(), len) })
}

/// Floats of each widened operand a thread keeps between calls (8 MiB, as
/// 1024 x 2048): fresh buffers of that size cost page faults and zeroing
/// worth a tenth of a 1024^3 product on two cores.
const WIDE_KEEP: usize = 2 << 20;

thread_local! {
    /// Each calling thread's float32 copies of a half A and B.
    static WIDE_A: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static WIDE_B: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `f` on [`widened`]'s copy, in this thread's buffer `key` where it is at
/// most [`WIDE_KEEP`] floats. Safety: as [`widened`].
unsafe fn with_widened<R>(key: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>, ptr: *const c_void, t: Float, len: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    crate::cpu::alloc::with_scratch(key, len, WIDE_KEEP, |wide| {
        with_type!(t, T => convert::convert(unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), len) }, wide));
        f(wide)
    })
}

/// Half-precision operands, accumulated in float32. Few rows against half
/// weights stored along k (decoding's `x·Wᵀ`) go to the skinny kernel, which
/// widens W as it reads it: half the bytes of float32 weights. Otherwise A and
/// B are widened to float32 first (O(n^2) against the product's O(n^3)). A half
/// C is accumulated in a float32 copy and rounded back into its rows (the gaps
/// between them untouched). Safety: the checked buffers of the call.
unsafe fn mixed(shape: &Shape, [a_t, b_t, c_t]: [Float; 3], a: *const c_void, b: *const c_void, c: *mut c_void) {
    let [a_len, b_len, c_len] = shape.lens;
    let mut c32 = (c_t != Float::F32).then(|| if shape.beta == 0.0 { crate::cpu::alloc::filled(c_len, 0.0) } else { unsafe { widened(c, c_t, c_len) } });
    let c_f32 = c32.as_mut().map_or(c.cast::<f32>(), |v| v.as_mut_ptr());
    let ((ta, sa), (tb, sb), sc) = (shape.a, shape.b, shape.c);
    if !(unsafe { bf16_kernel(shape, [a_t, b_t], a, b, c_f32) }) {
        unsafe {
            with_widened(&WIDE_A, a, a_t, a_len, |a32| {
                let direct = b_t != Float::F32 && with_type!(b_t, T => (0..shape.batch).all(|i| {
                    let av = View::new(a32.as_ptr().wrapping_add(i * sa.stride), sa.ld, ta);
                    let bv = View::new(b.cast::<T>().wrapping_add(i * sb.stride), sb.ld, tb);
                    let cv = View::new(c_f32.wrapping_add(i * sc.stride), sc.ld, false);
                    skinny::sgemm(av, bv, cv, shape.m, shape.n, shape.k, shape.alpha, shape.beta)
                }));
                if !direct {
                    with_widened(&WIDE_B, b, b_t, b_len, |b32| shape.run(a32.as_ptr(), b32.as_ptr(), c_f32));
                }
            })
        }
    }
    let Some(c32) = c32 else { return };
    with_type!(c_t, T => {
        let out = unsafe { std::slice::from_raw_parts_mut(c.cast::<T>(), c_len) };
        for i in 0..shape.batch {
            for r in 0..shape.m {
                let at = i * sc.stride + r * sc.ld;
                T::store(&c32[at..at + shape.n], &mut out[at..at + shape.n]);
            }
        }
    })
}
