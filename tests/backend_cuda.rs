//! CUDANN_BACKEND=cuda on a build without a GPU backend: -1, outputs untouched.
//! (Its own test binary: the variable is read once per process.)
mod common;
use common::*;
use cudann::*;

#[test]
fn demanding_cuda_without_a_gpu_backend_is_not_available() {
    // SAFETY: this binary's only test sets it before any library call.
    unsafe { std::env::set_var("CUDANN_BACKEND", "cuda") };
    let x = [1.0f32; 8];
    let mut y = poisoned(8);
    assert_eq!(unsafe { cuda_silu(x.as_ptr(), y.as_mut_ptr(), 8, NULL) }, CUDANN_NOT_AVAILABLE);
    assert!(cudann::error::last_error().starts_with("cuda_silu: CUDANN_BACKEND=cuda"), "{}", cudann::error::last_error());
    assert_untouched(&y, "output");
    // Invalid arguments are still reported as such, and size 0 is still a no-op.
    assert_invalid(unsafe { cuda_silu(x.as_ptr(), y.as_mut_ptr(), -1, NULL) }, "cuda_silu", "n must be >= 0");
    assert_ok(unsafe { cuda_silu(x.as_ptr(), y.as_mut_ptr(), 0, NULL) });
}
