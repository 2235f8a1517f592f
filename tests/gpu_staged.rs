//! CUDANN_BACKEND=cuda (its own test binary: the variable is read once per
//! process). With a GPU, host pointers are staged through it and compared with
//! the CPU kernels called directly; without one, every call is -1.
mod common;
use common::device::present;
use common::*;
use cudann::cpu::par::Src;
use cudann::*;

#[test]
fn host_pointers_run_on_the_gpu_when_cuda_is_demanded() {
    // SAFETY: set before this binary's first library call; its only test.
    unsafe { std::env::set_var("CUDANN_BACKEND", "cuda") };
    if !present("host_pointers_run_on_the_gpu_when_cuda_is_demanded") {
        let mut y = poisoned(4);
        assert_eq!(unsafe { cuda_silu([1.0f32; 4].as_ptr(), y.as_mut_ptr(), 4, NULL) }, CUDANN_NOT_AVAILABLE);
        assert!(cudann::error::last_error().starts_with("cuda_silu: CUDANN_BACKEND=cuda"), "{}", cudann::error::last_error());
        assert_untouched(&y, "output");
        // Invalid arguments are still -2, and size 0 is still a no-op.
        assert_invalid(unsafe { cuda_silu(y.as_ptr(), y.as_mut_ptr(), -1, NULL) }, "cuda_silu", "n must be >= 0");
        assert_ok(unsafe { cuda_silu(y.as_ptr(), y.as_mut_ptr(), 0, NULL) });
        return;
    }
    let mut rng = Rng::new(200);
    for n in [1usize, 1000, 300_001] {
        let x = rng.vec(n, 3.0);
        let mut y = poisoned(n);
        let mut want = poisoned(n);
        assert_ok(unsafe { cuda_silu(x.as_ptr(), y.as_mut_ptr(), n as i64, NULL) });
        cudann::cpu::elementwise::silu(Src::Slice(&x), &mut want);
        assert_close(&y, &f64s(&want), 4e-7, 1e-30, "staged silu");
    }
    let (rows, cols) = (33, 4097);
    let x = rng.vec(rows * cols, 2.0);
    let mut y = poisoned(x.len());
    let mut want = poisoned(x.len());
    assert_ok(unsafe { cuda_softmax(x.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, NULL) });
    cudann::cpu::softmax::softmax(Src::Slice(&x), &mut want, cols);
    assert_close(&y, &f64s(&want), 2e-6, 1e-9, "staged softmax");

    let (m, n, k) = (65, 129, 257);
    let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
    let c0 = rng.vec(m * n, 1.0);
    let (mut c, mut want) = (c0.clone(), c0.clone());
    assert_ok(unsafe { cuda_gemm(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), m as i32, n as i32, k as i32, 2.0, 0.5, NULL) });
    cudann::cpu::gemm::sgemm_batched(&a, &b, &mut want, m, n, k, 2.0, 0.5);
    assert_close(&c, &f64s(&want), 1e-4, 1e-4, "staged gemm");

    // A failing staged call still leaves outputs untouched.
    let mut out = poisoned(8);
    assert_invalid(unsafe { cuda_softmax(x.as_ptr(), out.as_mut_ptr(), 1, -8, NULL) }, "cuda_softmax", "cols must be >= 0");
    assert_untouched(&out, "output");
}
