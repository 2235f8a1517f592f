//! Host memory for `cudann_malloc` on the CPU backend: 64-byte aligned (a
//! cache line, and what AVX-512 loads like), zeroed, allocated fallibly.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use crate::error::{Error, Result};

/// The alignment of every host allocation.
const ALIGN: usize = 64;

fn layout(bytes: usize) -> Result<Layout> {
    Layout::from_size_align(bytes, ALIGN).map_err(|_| Error::InvalidValue(format!("bytes = {bytes} is too large to allocate")))
}

/// `bytes` (> 0) zeroed bytes, or -4.
pub fn allocate(bytes: usize) -> Result<usize> {
    // SAFETY: a layout of non-zero size.
    let ptr = unsafe { alloc_zeroed(layout(bytes)?) };
    if ptr.is_null() {
        return Err(Error::OutOfMemory(format!("could not allocate {bytes} bytes of host memory")));
    }
    Ok(ptr as usize)
}

/// Safety: `ptr` came from [`allocate`] with the same `bytes` and is not used again.
pub unsafe fn release(ptr: usize, bytes: usize) {
    if let Ok(layout) = layout(bytes) {
        unsafe { dealloc(ptr as *mut u8, layout) };
    }
}

/// Free and total memory of the machine, from /proc/meminfo.
pub fn info() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::NotAvailable(format!("cannot read /proc/meminfo: {e}")))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| Error::NotAvailable(format!("/proc/meminfo has no {name}")))
    };
    Ok((field("MemAvailable:")?, field("MemTotal:")?))
}
