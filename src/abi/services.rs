//! Library services: last error and version.

use std::ffi::c_char;

/// Why the most recent call on this thread failed, naming the function and the
/// offending argument; "" when that call succeeded. The string stays valid
/// until the next call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn cudann_last_error() -> *const c_char {
    crate::error::last_error_ptr()
}

/// The library version, e.g. "0.1.0".
#[unsafe(no_mangle)]
pub extern "C" fn cudann_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
