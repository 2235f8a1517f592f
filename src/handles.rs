//! What `cudann_malloc` and `cudann_stream_create` handed out: the live
//! allocations and streams, so that misuse (a double free, a pointer the
//! library did not allocate, a copy past the end of an allocation, a destroyed
//! stream) is refused with -2 instead of reaching the allocator or the driver.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use crate::error::{Result, invalid};

/// Where an allocation lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Host memory of the CPU backend (64-byte aligned).
    Host,
    /// Page-locked host memory registered with GPU `ordinal`'s context.
    Pinned(i32),
    /// Memory of GPU `ordinal`.
    Device(i32),
}

#[derive(Clone, Copy, Debug)]
pub struct Allocation {
    pub start: usize,
    pub bytes: usize,
    pub memory: Memory,
}

/// Live allocations by start address (ordered, to find the one holding an address).
static ALLOCATIONS: Mutex<BTreeMap<usize, Allocation>> = Mutex::new(BTreeMap::new());

fn allocations() -> MutexGuard<'static, BTreeMap<usize, Allocation>> {
    ALLOCATIONS.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn add_allocation(allocation: Allocation) {
    allocations().insert(allocation.start, allocation);
}

/// Takes `ptr`'s allocation out of the registry (the caller then releases it).
pub fn remove_allocation(ptr: usize) -> Result<Allocation> {
    allocations()
        .remove(&ptr)
        .ok_or_else(|| invalid(format!("ptr {ptr:#x} is not the start of a live allocation from cudann_malloc (never allocated, or already freed)")))
}

/// The live allocation that holds address `ptr`, if any.
pub fn allocation_at(ptr: usize) -> Option<Allocation> {
    let live = allocations();
    let (_, a) = live.range(..=ptr).next_back()?;
    (ptr < a.start + a.bytes).then_some(*a)
}

/// -2 when `bytes` from `ptr` start inside a library allocation and run past
/// its end. Memory the library did not allocate is the caller's to size.
pub fn check_range(name: &str, ptr: usize, bytes: usize) -> Result<()> {
    match allocation_at(ptr) {
        Some(a) if bytes > a.start + a.bytes - ptr => Err(invalid(format!(
            "{name}: {bytes} bytes at offset {} pass the end of a {}-byte allocation",
            ptr - a.start,
            a.bytes
        ))),
        _ => Ok(()),
    }
}

/// A caller's stream as the library knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// NULL: the default stream.
    Default,
    /// From `cudann_stream_create`: GPU `Some(ordinal)`, or the CPU backend's
    /// handle that does nothing.
    Ours(Option<i32>),
    /// Made elsewhere (PyTorch, CuPy, cudaStreamCreate): passed on as it is.
    Foreign,
}

#[derive(Default)]
struct Streams {
    live: HashMap<usize, Option<i32>>,
    /// Handles destroyed through the library and not handed out again since.
    destroyed: HashSet<usize>,
}

static STREAMS: RwLock<Option<Streams>> = RwLock::new(None);
/// Whether any stream was ever destroyed: until then no call pays for the lookup.
static ANY_DESTROYED: AtomicBool = AtomicBool::new(false);

fn with_streams<R>(f: impl FnOnce(&mut Streams) -> R) -> R {
    let mut streams = STREAMS.write().unwrap_or_else(|e| e.into_inner());
    f(streams.get_or_insert_with(Streams::default))
}

pub fn add_stream(handle: usize, device: Option<i32>) {
    with_streams(|s| {
        s.destroyed.remove(&handle);
        s.live.insert(handle, device);
    });
}

/// Takes a stream from `cudann_stream_create` out of the registry.
pub fn remove_stream(handle: usize) -> Result<Option<i32>> {
    let device = with_streams(|s| {
        let device = s.live.remove(&handle)?;
        s.destroyed.insert(handle);
        Some(device)
    });
    ANY_DESTROYED.store(true, Ordering::Release);
    device.ok_or_else(|| invalid(format!("stream {handle:#x} is not a live stream from cudann_stream_create (never created, or already destroyed)")))
}

/// What `stream` is; -2 for a stream the library destroyed.
pub fn stream(stream: *mut std::ffi::c_void) -> Result<StreamKind> {
    if stream.is_null() {
        return Ok(StreamKind::Default);
    }
    let handle = stream as usize;
    let streams = STREAMS.read().unwrap_or_else(|e| e.into_inner());
    let Some(streams) = streams.as_ref() else { return Ok(StreamKind::Foreign) };
    if let Some(&device) = streams.live.get(&handle) {
        return Ok(StreamKind::Ours(device));
    }
    if streams.destroyed.contains(&handle) {
        return Err(invalid(format!("stream {handle:#x} was destroyed (cudann_stream_destroy)")));
    }
    Ok(StreamKind::Foreign)
}

/// Every call's stream check: -2 for a stream the library destroyed.
pub fn check_stream(handle: *mut std::ffi::c_void) -> Result<()> {
    if handle.is_null() || !ANY_DESTROYED.load(Ordering::Acquire) {
        return Ok(());
    }
    stream(handle).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_allocation_holding_an_address() {
        add_allocation(Allocation { start: 0x1000, bytes: 64, memory: Memory::Host });
        assert_eq!(allocation_at(0x1000).map(|a| a.start), Some(0x1000));
        assert_eq!(allocation_at(0x103f).map(|a| a.start), Some(0x1000));
        assert!(allocation_at(0x1040).is_none() && allocation_at(0xfff).is_none());
        assert!(check_range("dst", 0x1010, 48).is_ok());
        assert!(check_range("dst", 0x1010, 49).unwrap_err().to_string().contains("offset 16 pass the end of a 64-byte allocation"));
        assert!(check_range("dst", 0x2000, 1 << 40).is_ok());
        assert_eq!(remove_allocation(0x1000).map(|a| a.bytes).ok(), Some(64));
        assert!(remove_allocation(0x1000).is_err());
    }
}
