//! Safetensors checkpoints through the `safetensors` crate: files opened for
//! reading (memory-mapped, the header parsed and checked once), and writers
//! that collect named tensors and save them in one go.
//!
//! A C caller holds a handle: an id in a registry, never a pointer the library
//! dereferences, so a stale, closed or made-up handle is a clear -2 rather than
//! a crash, and a close racing a read on another thread cannot free what the
//! read still uses (each call takes its own reference first).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo, TensorView};

use crate::abi::{CUDANN_BF16, CUDANN_F16, CUDANN_F32, CUDANN_F64, CUDANN_I32, CUDANN_I64, CUDANN_U8};
use crate::cpu::alloc;
use crate::error::{Error, Result, invalid};

/// The data types a checkpoint tensor may have, as the ABI numbers them.
const TYPES: [(i32, Dtype); 7] = [
    (CUDANN_F32, Dtype::F32),
    (CUDANN_F16, Dtype::F16),
    (CUDANN_BF16, Dtype::BF16),
    (CUDANN_I32, Dtype::I32),
    (CUDANN_I64, Dtype::I64),
    (CUDANN_F64, Dtype::F64),
    (CUDANN_U8, Dtype::U8),
];

pub fn code_of(dtype: Dtype) -> Option<i32> {
    TYPES.iter().find(|&&(_, d)| d == dtype).map(|&(code, _)| code)
}

pub fn dtype_of(code: i32) -> Result<Dtype> {
    TYPES.iter().find(|&&(c, _)| c == code).map(|&(_, d)| d).ok_or_else(|| invalid(format!("dtype must be one of the CUDANN_* data types 0..=6 (got {code})")))
}

/// One tensor of an open file.
pub struct Entry {
    pub name: CString,
    pub info: TensorInfo,
}

/// An open checkpoint: the mapped file and its tensors in file order.
pub struct Checkpoint {
    map: Mmap,
    /// Where the tensor data starts in the file (after the header).
    data_start: usize,
    pub entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl Checkpoint {
    /// Maps `path` and checks its header (offsets, sizes, the file's length).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| invalid(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: a read-only private mapping; the ABI documents that the file
        // must not be truncated while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| invalid(format!("cannot map {}: {e}", path.display())))?;
        let (header, metadata) = SafeTensors::read_metadata(&map).map_err(|e| invalid(format!("{} is not a valid safetensors file: {e}", path.display())))?;
        let mut entries: Vec<Entry> = Vec::new();
        for (name, info) in metadata.tensors() {
            let c_name = CString::new(name.as_str()).map_err(|_| invalid(format!("{}: tensor name {name:?} contains a NUL byte", path.display())))?;
            entries.push(Entry { name: c_name, info: info.clone() });
        }
        entries.sort_by_key(|e| e.info.data_offsets);
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.name.to_string_lossy().into_owned(), i)).collect();
        Ok(Checkpoint { map, data_start: 8 + header, entries, by_name })
    }

    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i]).ok_or_else(|| invalid(format!("no tensor named {name:?} in the file")))
    }

    /// The stored bytes of a tensor.
    pub fn bytes(&self, entry: &Entry) -> &[u8] {
        let (start, end) = entry.info.data_offsets;
        &self.map[self.data_start + start..self.data_start + end]
    }
}

/// Named tensors waiting to be saved, in the order they were added.
#[derive(Default)]
pub struct Writer {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

impl Writer {
    pub fn add(&mut self, name: &str, dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<()> {
        if self.tensors.iter().any(|(n, ..)| n == name) {
            return Err(invalid(format!("a tensor named {name:?} was already added")));
        }
        self.tensors.push((name.to_string(), dtype, shape, alloc::copy(data)));
        Ok(())
    }

    /// Writes the file (the crate writes a temporary file beside `path` and
    /// renames it into place, so a failed save never leaves a truncated
    /// checkpoint under the name). Tensors are stored by decreasing element
    /// alignment, then by name: the safetensors layout, not the order of adding.
    pub fn save(&self, path: &Path) -> Result<()> {
        let views = self.tensors.iter().map(|(name, dtype, shape, data)| {
            let view = TensorView::new(*dtype, shape.clone(), data).map_err(|e| Error::Internal(format!("tensor {name}: {e}")))?;
            Ok((name.as_str(), view))
        });
        let views: Vec<(&str, TensorView)> = views.collect::<Result<_>>()?;
        safetensors::tensor::serialize_to_file(views, None, path).map_err(|e| invalid(format!("cannot write {}: {e}", path.display())))
    }
}

/// Live handles of one kind: id -> object.
pub struct Registry<T> {
    next: AtomicUsize,
    live: Mutex<BTreeMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    pub const fn new() -> Self {
        Registry { next: AtomicUsize::new(1), live: Mutex::new(BTreeMap::new()) }
    }

    fn live(&self) -> MutexGuard<'_, BTreeMap<usize, Arc<T>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an object; its handle is a nonzero id.
    pub fn insert(&self, value: T) -> usize {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.live().insert(id, Arc::new(value));
        id
    }

    pub fn get(&self, id: usize, what: &str) -> Result<Arc<T>> {
        self.live().get(&id).cloned().ok_or_else(|| invalid(format!("{what} is not an open handle (closed already, or never opened)")))
    }

    pub fn remove(&self, id: usize, what: &str) -> Result<()> {
        self.live().remove(&id).map(drop).ok_or_else(|| invalid(format!("{what} is not an open handle (closed already, or never opened)")))
    }
}

pub static FILES: Registry<Checkpoint> = Registry::new();
pub static WRITERS: Registry<Mutex<Writer>> = Registry::new();
