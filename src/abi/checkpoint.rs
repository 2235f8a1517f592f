//! Checkpoint I/O: safetensors files, read (memory-mapped) and written, so
//! that C, Go and Ruby callers load and save real checkpoints without a JSON
//! parser of their own. Handles are opaque: ids the library looks up, never
//! pointers it follows, so a closed or made-up handle is -2, not a crash.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::Path;
use std::sync::Mutex;

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, out, put, require};
use crate::checkpoint::{self, Checkpoint, FILES, WRITERS, Writer};
use crate::dispatch::{self, Call};
use crate::error::{Result, invalid};

/// An open safetensors file (opaque; from `cudann_safetensors_open`).
pub struct CudannSafetensors {
    _opaque: [u8; 0],
}

/// A safetensors file being assembled (opaque; from
/// `cudann_safetensors_writer_create`).
pub struct CudannSafetensorsWriter {
    _opaque: [u8; 0],
}

/// A NUL-terminated UTF-8 argument.
unsafe fn text<'a>(name: &str, ptr: *const c_char) -> Result<&'a str> {
    require(!ptr.is_null(), || format!("{name} is NULL"))?;
    // SAFETY: the caller passes a NUL-terminated string (the ABI contract).
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| invalid(format!("{name} is not valid UTF-8")))
}

fn file(handle: *const CudannSafetensors) -> Result<std::sync::Arc<Checkpoint>> {
    FILES.get(handle as usize, "file")
}

/// Opens a safetensors file for reading: maps it and checks its header (every
/// tensor's data type, shape and offsets against the file's length). On
/// success `*file` is the handle (close it with `cudann_safetensors_close`).
/// The file must not be truncated while it is open. Returns -2 (with the
/// reason) for a NULL argument, a missing or unreadable file, or a malformed
/// or truncated one; `*file` is then untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_open(path: *const c_char, file: *mut *mut CudannSafetensors) -> i32 {
    ffi_fn!("cudann_safetensors_open", {
        let path = unsafe { text("path", path)? };
        let file = out("file", file)?;
        let id = FILES.insert(Checkpoint::open(Path::new(path))?);
        unsafe { file.write(id as *mut CudannSafetensors) };
        Ok(())
    })
}

/// Closes a file from `cudann_safetensors_open` (NULL: nothing to do). Names it
/// handed out are invalid afterwards. Returns -2 for a handle that is not open.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_close(file: *mut CudannSafetensors) -> i32 {
    ffi_fn!("cudann_safetensors_close", {
        if file.is_null() {
            return Ok(());
        }
        FILES.remove(file as usize, "file")
    })
}

/// `*count` = the number of tensors in the file. Returns -2 for a handle that
/// is not open or a NULL `count`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_count(file: *const CudannSafetensors, count: *mut i64) -> i32 {
    ffi_fn!("cudann_safetensors_count", {
        let f = self::file(file)?;
        unsafe { put("count", count, f.entries.len() as i64) }
    })
}

/// `*name` = the name of tensor `index` (`0 <= index < count`, in the order of
/// the tensors' data in the file; a file from the writer has them by data type,
/// larger elements first, then by name), a NUL-terminated string valid until
/// the file is closed. Returns -2 for a handle that is not open, an index out
/// of range, or a NULL `name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_name(file: *const CudannSafetensors, index: i64, name: *mut *const c_char) -> i32 {
    ffi_fn!("cudann_safetensors_name", {
        let f = self::file(file)?;
        let entry = usize::try_from(index).ok().and_then(|i| f.entries.get(i));
        let entry = entry.ok_or_else(|| invalid(format!("index must be in 0..{} (got {index})", f.entries.len())))?;
        // The string lives in the file's entry, which lives until the last close.
        unsafe { put("name", name, entry.name.as_ptr()) }
    })
}

/// A tensor's data type (`CUDANN_F32`, `CUDANN_F16`, `CUDANN_BF16`,
/// `CUDANN_I32`, `CUDANN_I64`, `CUDANN_F64` or `CUDANN_U8`), number of
/// dimensions and shape: `shape[0 .. *ndim]` (at most `max_dims` entries).
/// Returns -2 for a handle that is not open, an unknown name, a data type
/// outside that list, a negative `max_dims` or a shape of more than `max_dims`
/// dimensions, or NULL out-pointers (then nothing is written).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_info(
    file: *const CudannSafetensors,
    name: *const c_char,
    dtype: *mut c_int,
    ndim: *mut c_int,
    shape: *mut i64,
    max_dims: c_int,
) -> i32 {
    ffi_fn!("cudann_safetensors_info", {
        let f = self::file(file)?;
        let name = unsafe { text("name", name)? };
        let info = &f.entry(name)?.info;
        let code = checkpoint::code_of(info.dtype).ok_or_else(|| invalid(format!("tensor {name:?} has data type {}, which cudann does not name", info.dtype)))?;
        let max_dims = check::dim("max_dims", max_dims)?;
        require(info.shape.len() <= max_dims, || format!("tensor {name:?} has {} dimensions, more than max_dims ({max_dims})", info.shape.len()))?;
        let out = Output::new("shape", shape, info.shape.len())?;
        require(!dtype.is_null() && !ndim.is_null(), || "dtype and ndim must not be NULL".to_string())?;
        let dims: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        unsafe {
            out.slice().copy_from_slice(&dims);
            put("dtype", dtype, code)?;
            put("ndim", ndim, dims.len() as c_int)
        }
    })
}

/// Copies tensor `name` into `data` (host memory): `count` elements of data
/// type `dtype`, which must be the stored type and element count (no
/// conversion). Returns -2 for an unknown name, a `dtype` or `count` that does
/// not match, NULL `data` with `count > 0`; -1 for device memory (not yet).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_read(file: *const CudannSafetensors, name: *const c_char, dtype: c_int, data: *mut c_void, count: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_safetensors_read", {
        let f = self::file(file)?;
        let name = unsafe { text("name", name)? };
        let entry = f.entry(name)?;
        let stored = entry.info.dtype;
        require(checkpoint::dtype_of(dtype)? == stored, || format!("tensor {name:?} is {stored}, not the dtype asked for ({dtype})"))?;
        let elements: usize = entry.info.shape.iter().product();
        require(count == elements as i64, || format!("tensor {name:?} has {elements} elements, not count = {count}"))?;
        let bytes = f.bytes(entry);
        let out = Output::new("data", data.cast::<u8>(), bytes.len())?;
        let call = Call::new(stream, bytes.len(), [out.region()])?;
        dispatch::run_cpu_only(&call, || unsafe { out.slice().copy_from_slice(bytes) })
    })
}

fn writer(handle: *const CudannSafetensorsWriter) -> Result<std::sync::Arc<Mutex<Writer>>> {
    WRITERS.get(handle as usize, "writer")
}

/// Starts a new safetensors file: `*writer` is the handle; add tensors with
/// `cudann_safetensors_writer_add`, write them with `_save`, release the
/// handle with `_free`. Returns -2 for a NULL or misaligned `writer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_writer_create(writer: *mut *mut CudannSafetensorsWriter) -> i32 {
    ffi_fn!("cudann_safetensors_writer_create", {
        let writer = out("writer", writer)?;
        let id = WRITERS.insert(Mutex::new(Writer::default()));
        unsafe { writer.write(id as *mut CudannSafetensorsWriter) };
        Ok(())
    })
}

/// Adds tensor `name` of data type `dtype` (any of the seven, `CUDANN_F16` and
/// `CUDANN_BF16` included: the bytes are stored as they are) and shape
/// `shape[0 .. ndim]` (`ndim` may be 0: a scalar), copying its data from `data`
/// (host memory) now, so the buffer may be reused at once. Returns -2 for a name already added, an
/// unknown `dtype`, negative dimensions, NULL `data` with a non-empty shape;
/// -1 for device memory (not yet).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_writer_add(
    writer: *mut CudannSafetensorsWriter,
    name: *const c_char,
    dtype: c_int,
    ndim: c_int,
    shape: *const i64,
    data: *const c_void,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_safetensors_writer_add", {
        let w = self::writer(writer)?;
        let name = unsafe { text("name", name)? };
        let stored = checkpoint::dtype_of(dtype)?;
        let dims = Input::new("shape", shape, check::dim("ndim", ndim)?)?;
        let mut sizes = Vec::new();
        for (i, &d) in unsafe { dims.slice() }.iter().enumerate() {
            sizes.push(usize::try_from(d).map_err(|_| invalid(format!("shape[{i}] must be >= 0 (got {d})")))?);
        }
        let named: Vec<(&str, usize)> = sizes.iter().map(|&d| ("shape", d)).collect();
        let bytes = check::elements(&[("elements", check::elements(&named)?), ("element size", stored.bitsize() / 8)])?;
        let x = Input::new("data", data.cast::<u8>(), bytes)?;
        let call = Call::new(stream, 1, [x.region()])?;
        let mut added = Ok(());
        dispatch::run_cpu_only(&call, || {
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            added = w.add(name, stored, sizes, unsafe { x.slice() });
        })?;
        added
    })
}

/// Writes every tensor added so far to `path` as a safetensors file (through a
/// temporary file renamed into place: a failed save never leaves a truncated
/// file under `path`), larger data types first, then by name. The writer stays
/// valid. Returns -2 when the file cannot be written.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_writer_save(writer: *const CudannSafetensorsWriter, path: *const c_char) -> i32 {
    ffi_fn!("cudann_safetensors_writer_save", {
        let w = self::writer(writer)?;
        let path = unsafe { text("path", path)? };
        let w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.save(Path::new(path))
    })
}

/// Releases a writer and the data it holds (NULL: nothing to do). Returns -2
/// for a handle that is not live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_safetensors_writer_free(writer: *mut CudannSafetensorsWriter) -> i32 {
    ffi_fn!("cudann_safetensors_writer_free", {
        if writer.is_null() {
            return Ok(());
        }
        WRITERS.remove(writer as usize, "writer")
    })
}
