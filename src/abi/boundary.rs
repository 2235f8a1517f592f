//! The panic boundary every export runs inside.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{Error, Result, set_last_error};

/// Runs one exported call: catches any panic (unwinding into C is undefined
/// behaviour), turns the outcome into the ABI code and records the message that
/// `cudann_last_error()` returns.
pub fn guard(function: &str, body: impl FnOnce() -> Result<()>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        // An error raised by unwinding (a failed allocation, `cpu::alloc`).
        let payload = match payload.downcast::<Error>() {
            Ok(error) => return Err(*error),
            Err(other) => other,
        };
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(Error::Internal(format!("internal error (panic): {why}")))
    });
    match outcome {
        Ok(()) => {
            set_last_error("");
            super::CUDANN_SUCCESS
        }
        Err(error) => {
            set_last_error(&format!("{function}: {error}"));
            error.code()
        }
    }
}

/// The body of every `extern "C"` function: `ffi_fn!("cuda_silu", { ...; Ok(()) })`.
/// It exists so that no export can forget the boundary or name itself wrongly in
/// its messages; the function name given must be the export's own.
macro_rules! ffi_fn {
    ($name:literal, $body:block) => {
        $crate::abi::boundary::guard($name, || -> $crate::error::Result<()> { $body })
    };
}
pub(crate) use ffi_fn;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{invalid, last_error};

    #[test]
    fn a_panic_becomes_internal_with_its_message() {
        let code = guard("cuda_test", || panic!("index out of bounds"));
        assert_eq!(code, crate::abi::CUDANN_INTERNAL);
        assert_eq!(last_error(), "cuda_test: internal error (panic): index out of bounds");
    }

    #[test]
    fn a_failed_allocation_becomes_out_of_memory() {
        let code = guard("cuda_test", || {
            let _ = crate::cpu::alloc::filled(usize::MAX / 8, 0.0f64);
            Ok(())
        });
        assert_eq!(code, crate::abi::CUDANN_OUT_OF_MEMORY);
        assert!(last_error().starts_with("cuda_test: could not allocate"), "{}", last_error());
    }

    #[test]
    fn errors_map_to_codes_and_success_clears_the_message() {
        assert_eq!(guard("cuda_test", || Err(invalid("k must be >= 1 (got 0)"))), crate::abi::CUDANN_INVALID_VALUE);
        assert_eq!(last_error(), "cuda_test: k must be >= 1 (got 0)");
        assert_eq!(guard("cuda_test", || Ok(())), crate::abi::CUDANN_SUCCESS);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn the_last_error_is_per_thread() {
        guard("cuda_test", || Err(invalid("bad")));
        std::thread::spawn(|| {
            guard("cuda_other", || Ok(()));
            assert_eq!(last_error(), "");
        })
        .join()
        .unwrap();
        assert_eq!(last_error(), "cuda_test: bad");
    }
}
