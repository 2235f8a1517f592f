//! The reliability fixes on the GPU: row reductions of very long rows keep
//! float32 accuracy (each thread's partial sum in double), and the staging
//! memory of host-operand calls is bounded. Skipped, visibly, without a GPU.
mod common;
use common::device::{Dev, present};
use common::*;
use cudann::*;

/// The staging test measures free device memory: the tests of this file run
/// one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Largest |got - want| over the largest |want|.
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs())) / scale
}

#[test]
fn long_rows_keep_float32_accuracy_on_the_gpu() {
    if !present("long_rows_keep_float32_accuracy_on_the_gpu") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for cols in [1usize << 22, 1 << 24] {
        let x = Rng::new(93).vec(cols, 2.0);
        let xd = f64s(&x);
        let dx = Dev::from(&x);
        let dy = Dev::from(&poisoned(cols));
        assert_ok(unsafe { cuda_softmax(dx.p(), dy.p(), 1, cols as i32, NULL) });
        let y = dy.read();
        let err = relative_error(&y, &softmax_ref(&xd));
        assert!(err < 1e-5, "softmax relative error {err} at {cols} columns");

        let m = xd.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + xd.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let (dt, dloss) = (Dev::from(&[7i32]), Dev::from(&poisoned(1)));
        assert_ok(unsafe { cuda_cross_entropy_forward(dx.p(), dt.p(), dloss.p(), dy.p(), 1, cols as i32, NULL) });
        let loss = dloss.read()[0] as f64;
        assert!((loss - (lse - xd[7])).abs() <= 1e-5 * (lse - xd[7]).abs(), "loss {loss} want {} at {cols}", lse - xd[7]);

        let dw = Dev::from(&vec![1.0f32; cols]);
        assert_ok(unsafe { cuda_rmsnorm(dx.p(), dw.p(), dy.p(), 1, cols as i32, 0.0, NULL) });
        let r = (xd.iter().map(|v| v * v).sum::<f64>() / cols as f64).sqrt();
        let err = relative_error(&dy.read(), &xd.iter().map(|v| v / r).collect::<Vec<_>>());
        assert!(err < 1e-5, "rmsnorm relative error {err} at {cols} columns");
    }
}

fn free_device_memory() -> i64 {
    let (mut free, mut total) = (0i64, 0i64);
    assert_ok(cudann_device_synchronize());
    assert_ok(unsafe { cudann_mem_info(&mut free, &mut total) });
    free
}

/// A staged call on 1.5 GiB of host operands keeps at most the pools' cap
/// (256 MiB of device memory) once it returns.
#[test]
fn staging_memory_is_given_back_past_the_cap() {
    if !present("staging_memory_is_given_back_past_the_cap") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let n = 8192usize;
    let small = vec![1.0f32; 64 * 64];
    let mut c_small = vec![0.0f32; 64 * 64];
    // Warm up the pools with a small staged product, and cuBLAS with this
    // size's product on device memory (its workspace and lazily loaded
    // kernels stay, and are not staging memory).
    assert_ok(unsafe { cuda_gemm(small.as_ptr(), small.as_ptr(), c_small.as_mut_ptr(), 64, 64, 64, 1.0, 0.0, NULL) });
    let a = vec![0.5f32; n * n];
    {
        let (da, dc) = (Dev::from(&a), Dev::from(&vec![0.0f32; n * n]));
        assert_ok(unsafe { cuda_gemm(da.p(), da.p(), dc.p(), n as i32, n as i32, n as i32, 1.0, 0.0, NULL) });
    }
    let before = free_device_memory();
    let mut c = vec![0.0f32; n * n];
    assert_ok(unsafe { cuda_gemm(a.as_ptr(), a.as_ptr(), c.as_mut_ptr(), n as i32, n as i32, n as i32, 1.0, 0.0, NULL) });
    assert!(c.iter().step_by(9973).all(|&v| v == 0.25 * n as f32), "the product");
    let kept = before - free_device_memory();
    eprintln!("staging: {} MiB kept after a call that staged {} MiB", kept >> 20, (3 * n * n * 4) >> 20);
    assert!(kept <= 300 << 20, "{} MiB of device memory kept after the call", kept >> 20);
}
