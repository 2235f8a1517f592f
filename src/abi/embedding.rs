//! Embedding lookup and its backward.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output};
use crate::cpu::convert::with_type;
use crate::cpu::embedding;
use crate::dispatch::{self, Call};
use crate::error::Result;
use crate::gpu::ops;

/// The checked ids of an embedding call: every id < `vocab` where the host can
/// read them (device ids are the kernel's to check).
fn ids<'a>(ids: *const i32, n_ids: usize, vocab: usize) -> Result<Input<'a, i32>> {
    let ids = Input::new("ids", ids, n_ids)?;
    ids.indices_below(vocab, "vocab_size", true)?;
    Ok(ids)
}

/// Checked `n_ids`, `vocab_size` and `dim`: (n_ids, vocab, dim, output elements, table elements).
fn shape(n_ids: c_int, vocab_size: c_int, dim: c_int) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, vocab, dim) = (check::dim("n_ids", n_ids)?, check::dim("vocab_size", vocab_size)?, check::dim("dim", dim)?);
    let rows = check::elements(&[("n_ids", n), ("dim", dim)])?;
    let table = check::elements(&[("vocab_size", vocab), ("dim", dim)])?;
    Ok((n, vocab, dim, rows, table))
}

/// Embedding lookup: `output[i, :] = table[ids[i], :]` for `i < n_ids`, rows of
/// `dim` elements of data type `dtype` (`CUDANN_F32`, `CUDANN_F16` or
/// `CUDANN_BF16`, copied as they are) from `table[vocab_size, dim]`. A negative id
/// gives a row of zeros (padding). An id >= `vocab_size` is -2 (nothing
/// written) when the ids are host memory. Returns -2 for NULL pointers with a
/// non-empty shape, negative or overflowing sizes, a bad `dtype`, or overlaps.
/// On the all-device path (ids not checked by the host) an id >= `vocab_size`
/// gives a row of NaN.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_embedding(
    ids: *const i32,
    table: *const c_void,
    output: *mut c_void,
    n_ids: c_int,
    vocab_size: c_int,
    dim: c_int,
    dtype: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_embedding", {
        let dtype = check::float_type("dtype", dtype)?;
        let (n, vocab, dim, rows, table_len) = shape(n_ids, vocab_size, dim)?;
        let ids = self::ids(ids, if rows == 0 { 0 } else { n }, vocab)?;
        with_type!(dtype, T => {
            let t = Input::new("table", table.cast::<T>(), if rows == 0 { 0 } else { table_len })?;
            let y = Output::new("output", output.cast::<T>(), rows)?;
            // The kernel reads other rows than it writes: aliased inputs are copied.
            let call = Call::new(stream, rows, [ids.region(), t.region(), y.region()])?.kernels_in_place(false);
            dispatch::run(
                &call,
                || unsafe { embedding::embedding(&ids.read(&[y.region()]), &t.read(&[y.region()]), y.slice(), dim) },
                |g, p| unsafe { ops::embedding(g, stream.cast(), dtype, p[0], p[1], p[2], n, vocab, dim) },
            )
        })
    })
}

/// Embedding backward: `d_table[v, :] = sum of d_output[i, :] over the i with
/// ids[i] = v` for every row `v < vocab_size` (rows no id names are set to
/// zero; negative ids are skipped; written, not accumulated; deterministic).
/// An id >= `vocab_size` is -2 when the ids are host memory (on the
/// all-device path it gets no gradient). Returns -2 as `cudann_embedding`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_embedding_backward(
    ids: *const i32,
    d_output: *const f32,
    d_table: *mut f32,
    n_ids: c_int,
    vocab_size: c_int,
    dim: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_embedding_backward", {
        let (n, vocab, dim, rows, table_len) = shape(n_ids, vocab_size, dim)?;
        let ids = self::ids(ids, if table_len == 0 { 0 } else { n }, vocab)?;
        let dy = Input::new("d_output", d_output, if table_len == 0 { 0 } else { rows })?;
        let dt = Output::new("d_table", d_table, table_len)?;
        let call = Call::new(stream, table_len, [ids.region(), dy.region(), dt.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe { embedding::embedding_backward(&ids.read(&[dt.region()]), &dy.read(&[dt.region()]), dt.slice(), dim) },
            |g, p| unsafe { ops::embedding_backward(g, stream.cast(), p[0], p[1], p[2], n, vocab, dim) },
        )
    })
}
