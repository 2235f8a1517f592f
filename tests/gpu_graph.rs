//! Device calls captured into a CUDA graph and replayed. Its own test binary:
//! a capture must not overlap other threads' synchronising calls.
mod common;
use common::device::{Dev, Stream, capture_and_replay, present};
use common::*;
use cudann::*;

#[test]
fn graph_capture_and_replay_of_device_calls() {
    if !present("graph_capture_and_replay_of_device_calls") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(106);
    let (rows, cols) = (32, 1000);
    let x = rng.vec(rows * cols, 1.0);
    let w = rng.vec(cols, 1.0);
    let (dx, dw, dy, dz) = (Dev::from(&x), Dev::from(&w), Dev::from(&poisoned(x.len())), Dev::from(&poisoned(x.len())));
    // Warm-up outside the capture (first-use work: module load, cuBLAS handle).
    unsafe { assert_ok(cuda_rmsnorm(dx.p(), dw.p(), dy.p(), rows as i32, cols as i32, 1e-6, s.raw())) };
    s.sync();
    let ds = Dev::from(&poisoned(x.len()));
    capture_and_replay(&s, 3, || unsafe {
        assert_ok(cuda_rmsnorm(dx.p(), dw.p(), dy.p(), rows as i32, cols as i32, 1e-6, s.raw()));
        assert_ok(cuda_silu(dy.p(), dz.p(), x.len() as i64, s.raw()));
        assert_ok(cuda_softmax(dz.p(), ds.p(), rows as i32, cols as i32, s.raw()));
    });
    let (mut y, mut z, mut sm) = (poisoned(x.len()), poisoned(x.len()), poisoned(x.len()));
    unsafe {
        cuda_rmsnorm(x.as_ptr(), w.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, 1e-6, NULL);
        cuda_silu(y.as_ptr(), z.as_mut_ptr(), x.len() as i64, NULL);
        cuda_softmax(z.as_ptr(), sm.as_mut_ptr(), rows as i32, cols as i32, NULL);
    }
    assert_close(&ds.read(), &f64s(&sm), 1e-5, 1e-6, "captured rmsnorm -> silu -> softmax");
}

