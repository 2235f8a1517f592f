//! Buffers whose size comes from the caller's arguments, allocated fallibly.
//! Rust aborts the process when an allocation fails; here a failure unwinds to
//! the ABI boundary instead (without running the panic hook, so nothing is
//! printed), which returns CUDANN_OUT_OF_MEMORY. Unwinding rather than a
//! `Result` because these buffers are taken deep inside parallel loops.

use std::cell::Cell;
use std::panic::resume_unwind;
use std::thread::LocalKey;

use crate::error::Error;

/// Gives up the call with -4: `bytes` could not be allocated.
fn out_of_memory(bytes: usize) -> ! {
    resume_unwind(Box::new(Error::OutOfMemory(format!("could not allocate {bytes} bytes of host memory"))))
}

/// An empty vector with room for `len` elements.
pub fn with_capacity<T>(len: usize) -> Vec<T> {
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        out_of_memory(len.saturating_mul(size_of::<T>()));
    }
    v
}

/// `len` copies of `value`.
pub fn filled<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = with_capacity(len);
    v.resize(len, value);
    v
}

/// A copy of `data`.
pub fn copy<T: Clone>(data: &[T]) -> Vec<T> {
    let mut v = with_capacity(data.len());
    v.extend_from_slice(data);
    v
}

/// The items of an exactly sized iterator.
pub fn collect<T>(items: impl ExactSizeIterator<Item = T>) -> Vec<T> {
    let mut v = with_capacity(items.len());
    v.extend(items);
    v
}

/// Runs `f` on `len` elements of scratch: this thread's kept buffer in `key`
/// (grown as needed, with zeros) when `len <= keep`, else a buffer of its
/// own, zeros, freed after. A kept buffer holds what the last call left.
pub fn with_scratch<T: Copy + Default, R>(key: &'static LocalKey<Cell<Vec<T>>>, len: usize, keep: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    if len > keep {
        return f(&mut filled(len, T::default()));
    }
    with_kept(key, |buffer| {
        if buffer.len() < len {
            buffer.resize(len, T::default());
        }
        f(&mut buffer[..len])
    })
}

/// Runs `f` on this thread's kept buffer in `key`, put back afterwards. It is
/// taken out of the cell while `f` runs: an op with parallel work of its own
/// may have this thread run another block meanwhile, which then finds the
/// cell empty and starts a buffer of its own.
pub fn with_kept<T, R>(key: &'static LocalKey<Cell<Vec<T>>>, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
    let mut buffer = key.take();
    let result = f(&mut buffer);
    key.set(buffer);
    result
}
