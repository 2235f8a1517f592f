//! NCCL, loaded at run time (libnccl.so.2, as PyTorch's and the system's
//! packages install it), so the library loads and runs where NCCL is absent:
//! only a communicator of more than one rank needs it.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// ncclUniqueId: 128 opaque bytes, passed between the ranks by the caller.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId(pub [u8; 128]);

/// An NCCL communicator (ncclComm_t).
pub type Comm = *mut c_void;

type NcclResult = c_int;
const SUCCESS: NcclResult = 0;
// ncclDataType_t and ncclRedOp_t values of nccl.h.
const FLOAT32: c_int = 7;
pub(crate) const SUM: c_int = 0;
pub(crate) const AVG: c_int = 4;

struct Nccl {
    _lib: libloading::Library,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(Comm) -> NcclResult,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> NcclResult,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> NcclResult,
    error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
}

fn load() -> std::result::Result<Nccl, String> {
    let names = ["libnccl.so.2", "libnccl.so"];
    // SAFETY: loading NCCL runs only its (side-effect free) initialisers.
    let lib = names.iter().find_map(|&n| unsafe { libloading::Library::new(n) }.ok()).ok_or_else(|| format!("NCCL is not installed (none of {} could be loaded)", names.join(", ")))?;
    // SAFETY: the symbols have the signatures of nccl.h (NCCL 2.x).
    unsafe {
        macro_rules! symbol {
            ($name:literal) => {
                *lib.get($name.as_bytes()).map_err(|e| format!("NCCL lacks {}: {e}", $name))?
            };
        }
        Ok(Nccl {
            get_unique_id: symbol!("ncclGetUniqueId"),
            comm_init_rank: symbol!("ncclCommInitRank"),
            comm_destroy: symbol!("ncclCommDestroy"),
            all_reduce: symbol!("ncclAllReduce"),
            broadcast: symbol!("ncclBroadcast"),
            error_string: symbol!("ncclGetErrorString"),
            _lib: lib,
        })
    }
}

fn nccl() -> Result<&'static Nccl> {
    static NCCL: OnceLock<std::result::Result<Nccl, String>> = OnceLock::new();
    NCCL.get_or_init(load).as_ref().map_err(|why| Error::NotAvailable(why.clone()))
}

fn check(result: NcclResult, what: &str) -> Result<()> {
    if result == SUCCESS {
        return Ok(());
    }
    // SAFETY: NCCL returns a static string for any result code.
    let text = nccl().ok().map(|n| unsafe { CStr::from_ptr((n.error_string)(result)) }.to_string_lossy().into_owned());
    Err(Error::LaunchFailed(format!("{what}: NCCL error {result} ({})", text.unwrap_or_default())))
}

pub fn unique_id() -> Result<UniqueId> {
    let n = nccl()?;
    let mut id = UniqueId([0; 128]);
    // SAFETY: writes 128 bytes into `id`.
    check(unsafe { (n.get_unique_id)(&mut id) }, "ncclGetUniqueId")?;
    Ok(id)
}

/// A communicator of `nranks` on the calling thread's current device (the
/// caller made its context current). Blocks until every rank has joined.
pub fn init(nranks: usize, rank: usize, id: UniqueId) -> Result<Comm> {
    let n = nccl()?;
    let mut comm = std::ptr::null_mut();
    // SAFETY: an out-pointer; the id is passed by value.
    check(unsafe { (n.comm_init_rank)(&mut comm, nranks as c_int, id, rank as c_int) }, "ncclCommInitRank")?;
    Ok(comm)
}

/// Safety: a live communicator, destroyed once.
pub unsafe fn destroy(comm: Comm) -> Result<()> {
    check(unsafe { (nccl()?.comm_destroy)(comm) }, "ncclCommDestroy")
}

/// Safety: device buffers of `n` floats on the communicator's device.
pub unsafe fn all_reduce(send: *const c_void, recv: *mut c_void, n: usize, op: c_int, comm: Comm, stream: *mut c_void) -> Result<()> {
    check(unsafe { (nccl()?.all_reduce)(send, recv, n, FLOAT32, op, comm, stream) }, "ncclAllReduce")
}

/// Safety: as [`all_reduce`].
pub unsafe fn broadcast(send: *const c_void, recv: *mut c_void, n: usize, root: usize, comm: Comm, stream: *mut c_void) -> Result<()> {
    check(unsafe { (nccl()?.broadcast)(send, recv, n, FLOAT32, root as c_int, comm, stream) }, "ncclBroadcast")
}
