//! Communicators for data-parallel training: each rank (a process, or a thread
//! driving one GPU) runs the same step on its share of the batch and the
//! gradients are summed or averaged across ranks with one all-reduce. Through
//! NCCL on GPUs; a communicator of one rank needs nothing (every collective is
//! an exact copy or nothing), so single-process programs work unchanged on any
//! machine.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::boundary::ffi_fn;
use super::memory;
use crate::check::{self, Input, Output, out, require};
use crate::dispatch::{self, Requested};
use crate::error::{Error, Result, invalid};
use crate::gpu::comm::{self as nccl, UniqueId};
use crate::gpu::memory::{self as device, Place};
use crate::gpu;
use crate::handles;

/// Bytes of a communicator id (`cudann_comm_id`), as NCCL's ncclUniqueId.
pub const CUDANN_COMM_ID_BYTES: i32 = 128;
/// `cudann_all_reduce`'s operations: the sum, or the mean, over the ranks.
pub const CUDANN_SUM: i32 = 0;
pub const CUDANN_AVG: i32 = 1;

/// The first bytes of an id made without NCCL: good for one rank only.
const SOLO: &[u8; 16] = b"cudann solo id\0\0";

enum Kind {
    /// One rank: collectives copy.
    Solo,
    /// An NCCL communicator on GPU `device`.
    Nccl { comm: nccl::Comm, device: i32 },
}

struct Communicator {
    nranks: usize,
    rank: usize,
    kind: Kind,
}

// SAFETY: an NCCL communicator may be used from any thread (one call at a time,
// which the registry's lock gives destroy; collectives follow NCCL's rules).
unsafe impl Send for Communicator {}

/// Live communicators by handle (the handle is a number the library hands
/// out, never a pointer it dereferences).
static LIVE: Mutex<Option<HashMap<usize, Communicator>>> = Mutex::new(None);
/// Handles look like addresses (bindings keep them in pointer types).
static NEXT: AtomicU64 = AtomicU64::new(0x7c00_0000);

fn with_live<R>(f: impl FnOnce(&mut HashMap<usize, Communicator>) -> R) -> R {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    f(live.get_or_insert_with(HashMap::new))
}

/// (nranks, rank, NCCL communicator and device, or None for one rank) of a live handle.
fn lookup(comm: *mut c_void) -> Result<(usize, usize, Option<(nccl::Comm, i32)>)> {
    with_live(|live| {
        let c = live.get(&(comm as usize)).ok_or_else(|| invalid(format!("comm {comm:p} is not a live communicator from cudann_comm_init (never created, or destroyed)")))?;
        let kind = match c.kind {
            Kind::Solo => None,
            Kind::Nccl { comm, device } => Some((comm, device)),
        };
        Ok((c.nranks, c.rank, kind))
    })
}

/// Writes a new communicator id (`CUDANN_COMM_ID_BYTES` bytes) to `id`: rank 0
/// makes it and passes it to the other ranks (a file, a pipe). Where NCCL and
/// a GPU are usable it is NCCL's (ncclGetUniqueId); elsewhere an id good for a
/// one-rank communicator. Returns -2 for NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_comm_id(id: *mut c_void) -> i32 {
    ffi_fn!("cudann_comm_id", {
        let id = out("id", id.cast::<UniqueId>())?;
        let nccl_id = match dispatch::chosen_gpu() {
            Ok(Some(g)) => {
                let _current = g.enter()?;
                nccl::unique_id().ok()
            }
            _ => None,
        };
        let made = nccl_id.unwrap_or_else(|| {
            let mut bytes = [0u8; 128];
            bytes[..16].copy_from_slice(SOLO);
            bytes[16..24].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
            UniqueId(bytes)
        });
        unsafe { id.write_unaligned(made) };
        Ok(())
    })
}

/// Joins communicator `id` as rank `rank` of `nranks`, on the calling thread's
/// current device (`cudann_set_device`); blocks until all ranks have joined.
/// Writes the handle to `*comm`. One rank needs no NCCL and no GPU (any id, on
/// any backend). More ranks need the GPU backend and NCCL (libnccl.so.2): -1
/// with a message without them. Returns -2 for NULL pointers, `nranks < 1`,
/// `rank` outside `[0, nranks)`, or an id made without NCCL for more than one
/// rank.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_comm_init(comm: *mut *mut c_void, nranks: c_int, rank: c_int, id: *const c_void) -> i32 {
    ffi_fn!("cudann_comm_init", {
        let comm = out("comm", comm)?;
        require(!id.is_null(), || "id is NULL".to_string())?;
        require(nranks >= 1, || format!("nranks must be >= 1 (got {nranks})"))?;
        require(rank >= 0 && rank < nranks, || format!("rank must be in [0, nranks = {nranks}) (got {rank})"))?;
        let id = unsafe { id.cast::<UniqueId>().read_unaligned() };
        let kind = if nranks == 1 {
            Kind::Solo
        } else {
            require(id.0[..16] != SOLO[..], || "this id was made without NCCL (cudann_comm_id on a machine without NCCL or a GPU): it serves one rank only".to_string())?;
            if dispatch::requested()? == Requested::Cpu {
                return Err(Error::NotAvailable("a communicator of more than one rank needs the GPU backend (CUDANN_BACKEND=cpu)".to_string()));
            }
            let g = dispatch::chosen_gpu()?.ok_or_else(|| Error::NotAvailable("a communicator of more than one rank needs a GPU (none is usable)".to_string()))?;
            let _current = g.enter()?;
            Kind::Nccl { comm: nccl::init(nranks as usize, rank as usize, id)?, device: g.ordinal }
        };
        let handle = NEXT.fetch_add(16, Ordering::Relaxed) as usize;
        with_live(|live| live.insert(handle, Communicator { nranks: nranks as usize, rank: rank as usize, kind }));
        unsafe { comm.write(handle as *mut c_void) };
        Ok(())
    })
}

/// Destroys a communicator (after the work enqueued with it). Returns -2 for a
/// handle that is not live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_comm_destroy(comm: *mut c_void) -> i32 {
    ffi_fn!("cudann_comm_destroy", {
        let c = with_live(|live| live.remove(&(comm as usize))).ok_or_else(|| invalid(format!("comm {comm:p} is not a live communicator from cudann_comm_init (never created, or destroyed)")))?;
        if let Kind::Nccl { comm, device } = c.kind {
            let _current = gpu::device(device)?.enter()?;
            unsafe { nccl::destroy(comm)? };
        }
        Ok(())
    })
}

/// Checks a collective's buffers: `n` floats each, `recv` may be `send`
/// (in place), no other overlap; with NCCL both device memory of the
/// communicator's device.
fn buffers<'a>(send: *const f32, recv: *mut f32, n: i64, send_used: bool, device: Option<i32>) -> Result<(Input<'a, f32>, Output<'a, f32>)> {
    let n = check::count("n", n)?;
    let x = Input::new("send", send, if send_used { n } else { 0 })?;
    let y = Output::new("recv", recv, n)?;
    check::disjoint(&[x.region(), y.region()])?;
    if let Some(ordinal) = device {
        for r in [x.region(), y.region()] {
            if r.bytes > 0 {
                require(device::classify(r.start) == Place::Device(ordinal), || format!("{} must be device memory of GPU {ordinal} (the communicator's); use cudann_malloc", r.name))?;
            }
        }
    }
    Ok((x, y))
}

/// Sums (`CUDANN_SUM`) or averages (`CUDANN_AVG`) `n` floats of `send` over the
/// ranks into every rank's `recv`, ordered on `stream`. `recv` may be `send`.
/// With one rank it is a copy (nothing in place): exact, on any backend and
/// memory. With NCCL the buffers must be device memory of the communicator's
/// device. Every rank must call it with the same `n` and `op`. Returns -2 for
/// a dead handle, a bad `op`, `n < 0`, NULL with `n > 0`, a partial overlap,
/// or host memory with NCCL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_all_reduce(send: *const f32, recv: *mut f32, n: i64, op: c_int, comm: *mut c_void, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_all_reduce", {
        let (_, _, nccl_comm) = lookup(comm)?;
        let op = match op {
            CUDANN_SUM => nccl::SUM,
            CUDANN_AVG => nccl::AVG,
            _ => return Err(invalid(format!("op must be CUDANN_SUM (0) or CUDANN_AVG (1) (got {op})"))),
        };
        handles::check_stream(stream)?;
        let (x, y) = buffers(send, recv, n, true, nccl_comm.map(|(_, d)| d))?;
        match nccl_comm {
            None => unsafe { copy_unless_in_place(&x, &y, stream) },
            Some((c, ordinal)) => {
                let _current = gpu::device(ordinal)?.enter()?;
                unsafe { nccl::all_reduce(x.ptr.cast(), y.ptr.cast(), y.len, op, c, stream) }
            }
        }
    })
}

/// Copies rank `root`'s `send` into every rank's `recv` (`n` floats), ordered
/// on `stream`; `send` is read on the root only (other ranks may pass NULL);
/// `recv` may be `send`. Buffers, one rank and errors as `cudann_all_reduce`,
/// and -2 for `root` outside `[0, nranks)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_broadcast(send: *const f32, recv: *mut f32, n: i64, root: c_int, comm: *mut c_void, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_broadcast", {
        let (nranks, rank, nccl_comm) = lookup(comm)?;
        require(root >= 0 && (root as usize) < nranks, || format!("root must be in [0, nranks = {nranks}) (got {root})"))?;
        handles::check_stream(stream)?;
        let (x, y) = buffers(send, recv, n, rank == root as usize, nccl_comm.map(|(_, d)| d))?;
        match nccl_comm {
            None => unsafe { copy_unless_in_place(&x, &y, stream) },
            Some((c, ordinal)) => {
                let _current = gpu::device(ordinal)?.enter()?;
                unsafe { nccl::broadcast(x.ptr.cast(), y.ptr.cast(), y.len, root as usize, c, stream) }
            }
        }
    })
}

/// A one-rank collective: `recv = send` (nothing when they are one buffer).
unsafe fn copy_unless_in_place(x: &Input<f32>, y: &Output<f32>, stream: *mut c_void) -> Result<()> {
    if y.len == 0 || x.ptr == y.ptr.cast_const() {
        return Ok(());
    }
    unsafe { memory::copy(y.ptr.cast(), x.ptr.cast(), y.len * 4, stream) }
}
