//! Argument validation, shared by every backend so they can never disagree on
//! what is legal. Everything here runs before any output is touched.

use std::borrow::Cow;
use std::ffi::c_int;
use std::marker::PhantomData;
use std::mem::size_of;

use crate::error::{Result, invalid};

/// A dimension given as C `int`: must be `>= 0`.
pub fn dim(name: &str, value: c_int) -> Result<usize> {
    usize::try_from(value).map_err(|_| invalid(format!("{name} must be >= 0 (got {value})")))
}

/// An out-pointer: non-NULL and aligned (checked before anything is done).
pub fn out<T>(name: &str, ptr: *mut T) -> Result<*mut T> {
    require(!ptr.is_null(), || format!("{name} is NULL"))?;
    require(ptr.is_aligned(), || format!("{name} is not aligned to {} bytes", size_of::<T>()))?;
    Ok(ptr)
}

/// Stores `value` through a checked out-pointer.
pub unsafe fn put<T>(name: &str, ptr: *mut T, value: T) -> Result<()> {
    unsafe { out(name, ptr)?.write(value) };
    Ok(())
}

/// A flat element count given as `int64_t`: must be `>= 0`, and small enough
/// that its size in bytes is addressable (as [`elements`]).
pub fn count(name: &str, value: i64) -> Result<usize> {
    let n = usize::try_from(value).map_err(|_| invalid(format!("{name} must be >= 0 (got {value})")))?;
    elements(&[(name, n)])
}

/// The largest element count any tensor may have: its size in bytes, for the
/// widest element the library handles (8 bytes), still fits in `isize`.
pub(crate) const MAX_ELEMENTS: usize = isize::MAX as usize / size_of::<f64>();

/// The element count of a tensor with these (already non-negative) dimensions;
/// -2 when the product exceeds [`MAX_ELEMENTS`]. A zero dimension makes an
/// empty tensor, whatever the others are.
pub fn elements(dims: &[(&str, usize)]) -> Result<usize> {
    if dims.iter().any(|&(_, d)| d == 0) {
        return Ok(0);
    }
    let total = dims.iter().try_fold(1usize, |acc, &(_, d)| acc.checked_mul(d));
    match total {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        _ => {
            let names: Vec<String> = dims.iter().map(|(n, d)| format!("{n}={d}")).collect();
            Err(invalid(format!("tensor size overflows ({})", names.join(" x "))))
        }
    }
}

/// A floating-point data-type argument: `CUDANN_F32`, `CUDANN_F16` or `CUDANN_BF16`.
pub fn float_type(name: &str, value: c_int) -> Result<crate::cpu::convert::Float> {
    use crate::abi::{CUDANN_BF16, CUDANN_F16, CUDANN_F32};
    use crate::cpu::convert::Float;
    match value {
        CUDANN_F32 => Ok(Float::F32),
        CUDANN_F16 => Ok(Float::F16),
        CUDANN_BF16 => Ok(Float::Bf16),
        _ => Err(invalid(format!("{name} must be CUDANN_F32 (0), CUDANN_F16 (1) or CUDANN_BF16 (2) (got {value})"))),
    }
}

/// A C `int` flag: 0 or 1.
pub fn flag(name: &str, value: c_int) -> Result<bool> {
    require(value == 0 || value == 1, || format!("{name} must be 0 or 1 (got {value})"))?;
    Ok(value == 1)
}

/// Fails unless `condition` holds; `what` says what was required.
pub fn require(condition: bool, what: impl FnOnce() -> String) -> Result<()> {
    if condition { Ok(()) } else { Err(invalid(what())) }
}

/// A caller buffer the call reads: a pointer, its element count and its name.
#[derive(Clone, Copy)]
pub struct Input<'a, T> {
    pub name: &'static str,
    pub ptr: *const T,
    pub len: usize,
    life: PhantomData<&'a T>,
}

/// A caller buffer the call writes (and may also read, like GEMM's `C`).
#[derive(Clone, Copy)]
pub struct Output<'a, T> {
    pub name: &'static str,
    pub ptr: *mut T,
    pub len: usize,
    life: PhantomData<&'a mut T>,
}

fn pointer<T>(name: &str, ptr: *const T, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // Sizes come from [`elements`]; this guards the byte arithmetic of every region.
    require(len <= isize::MAX as usize / size_of::<T>().max(1), || format!("{name} holds {len} elements, more than memory can address"))?;
    require(!ptr.is_null(), || format!("{name} is NULL but holds {len} elements"))?;
    require(ptr.is_aligned(), || format!("{name} is not aligned to {} bytes", size_of::<T>()))
}

impl<'a, T> Input<'a, T> {
    pub fn new(name: &'static str, ptr: *const T, len: usize) -> Result<Self> {
        pointer(name, ptr, len)?;
        Ok(Input { name, ptr, len, life: PhantomData })
    }

    /// The buffer as a slice. Safety: the caller's pointer is valid for `len`
    /// elements (the ABI contract) and host-readable.
    pub unsafe fn slice(&self) -> &'a [T] {
        if self.len == 0 { &[] } else { unsafe { std::slice::from_raw_parts(self.ptr, self.len) } }
    }

    pub fn region(&self) -> Region {
        Region::new(self.name, self.ptr as usize, self.len * size_of::<T>(), false)
    }

    /// The values where the host can read them, or nothing for device memory:
    /// for the checks only the host can make (targets < vocab, ...).
    /// Safety: as [`Input::slice`].
    pub unsafe fn host_view(&self) -> &'a [T] {
        if crate::dispatch::host_readable(self.ptr) { unsafe { self.slice() } } else { &[] }
    }

    /// The data for a host computation that writes `outputs`: borrowed, or
    /// copied first when it is the very buffer one of them overwrites (an
    /// in-place call the kernel does not stream itself). Safety: as [`Input::slice`].
    pub unsafe fn read(&self, outputs: &[Region]) -> Cow<'a, [T]>
    where
        T: Clone,
    {
        let data = unsafe { self.slice() };
        if outputs.iter().any(|o| o.overlaps(&self.region())) { Cow::Owned(crate::cpu::alloc::copy(data)) } else { Cow::Borrowed(data) }
    }
}

impl<'a, T> Output<'a, T> {
    pub fn new(name: &'static str, ptr: *mut T, len: usize) -> Result<Self> {
        pointer(name, ptr, len)?;
        Ok(Output { name, ptr, len, life: PhantomData })
    }

    /// The buffer as a mutable slice. Safety: as [`Input::slice`], plus no other
    /// live slice overlaps it ([`disjoint`] has checked that).
    pub unsafe fn slice(&self) -> &'a mut [T] {
        if self.len == 0 { &mut [] } else { unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) } }
    }

    pub fn region(&self) -> Region {
        Region::new(self.name, self.ptr as usize, self.len * size_of::<T>(), true)
    }

    /// Whether `input` is this very buffer (an in-place call).
    pub fn is<U>(&self, input: &Input<'_, U>) -> bool {
        self.len > 0 && std::ptr::eq(self.ptr.cast::<u8>(), input.ptr.cast::<u8>())
    }
}

impl Input<'_, i32> {
    /// Fails when an index the host can read lies outside `[0, upper)`
    /// (negative ones too unless `negative_ok`, for padding); device indices
    /// are the kernel's to handle. `bound` names `upper` in the message.
    pub fn indices_below(&self, upper: usize, bound: &str, negative_ok: bool) -> Result<()> {
        // SAFETY: as `Input::slice`, for the host memory `host_view` admits.
        let values = unsafe { self.host_view() };
        match values.iter().enumerate().find(|&(_, &v)| if v < 0 { !negative_ok } else { v as usize >= upper }) {
            Some((i, &v)) => Err(invalid(format!("{}[{i}] = {v} is outside [0, {bound} = {upper})", self.name))),
            None => Ok(()),
        }
    }
}

/// The bytes a buffer covers, for overlap checks and (later) pointer classification.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub name: &'static str,
    pub start: usize,
    pub bytes: usize,
    pub written: bool,
}

impl Region {
    fn new(name: &'static str, start: usize, bytes: usize, written: bool) -> Self {
        Region { name, start, bytes, written }
    }

    fn overlaps(&self, other: &Region) -> bool {
        self.bytes > 0 && other.bytes > 0 && self.start < other.start + other.bytes && other.start < self.start + self.bytes
    }
}

/// Rejects any overlap between a written buffer and another buffer, except an
/// output that is exactly an input (same pointer, same size): ABI.md allows
/// every in-place call.
pub fn disjoint(regions: &[Region]) -> Result<()> {
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            if !(a.written || b.written) || !a.overlaps(b) {
                continue;
            }
            let (out, other) = if a.written { (a, b) } else { (b, a) };
            let same_buffer = out.start == other.start && out.bytes == other.bytes;
            require(!other.written && same_buffer, || {
                if other.written {
                    format!("{} overlaps {} (outputs must be distinct)", out.name, other.name)
                } else {
                    format!("{} partially overlaps {} (in place needs the exact same buffer)", out.name, other.name)
                }
            })?;
        }
    }
    Ok(())
}
