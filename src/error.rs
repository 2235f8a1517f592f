//! One error type for the whole library; each variant is one ABI return code.

use std::cell::RefCell;
use std::ffi::{CStr, CString};

/// Why a call failed. The message never names the function: the ABI boundary
/// prefixes it (`cuda_topk_sample: k must be >= 1 (got 0)`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotAvailable(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("{0}")]
    LaunchFailed(String),
    #[error("{0}")]
    OutOfMemory(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The `int32_t` the C caller sees.
    pub fn code(&self) -> i32 {
        match self {
            Error::NotAvailable(_) => crate::abi::CUDANN_NOT_AVAILABLE,
            Error::InvalidValue(_) => crate::abi::CUDANN_INVALID_VALUE,
            Error::LaunchFailed(_) => crate::abi::CUDANN_LAUNCH_FAILED,
            Error::OutOfMemory(_) => crate::abi::CUDANN_OUT_OF_MEMORY,
            Error::Internal(_) => crate::abi::CUDANN_INTERNAL,
        }
    }
}

/// Shorthand for the most common failure, a bad argument.
pub fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidValue(message.into())
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records the outcome of the call that just finished on this thread.
pub fn set_last_error(message: &str) {
    LAST_ERROR.with(|cell| {
        let mut last = cell.borrow_mut();
        if message.is_empty() && last.is_empty() {
            return; // the common case, success after success: no allocation
        }
        // A message never contains NUL by construction; strip any defensively.
        *last = CString::new(message.replace('\0', "")).unwrap_or_default();
    });
}

/// The last message as a C string, valid until the next call on this thread.
pub fn last_error_ptr() -> *const std::ffi::c_char {
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

/// The last message as Rust text (for Rust callers and tests).
pub fn last_error() -> String {
    // SAFETY: the pointer comes from the live thread-local CString.
    unsafe { CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned()
}
