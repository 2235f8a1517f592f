//! Device memory on the GPU: `cudann_malloc` gives device memory of the
//! current device that every op reads directly, streams from
//! `cudann_stream_create` are real CUstreams (graph capture works on them),
//! pointers from elsewhere (the driver, PyTorch) interoperate, memory goes back
//! on free, and a second device is used when there is one. The backend-
//! agnostic checks are in tests/memory.rs, which runs here too. Skipped,
//! visibly, without a GPU.
mod common;
use std::ffi::c_void;

use common::device::{Dev, present};
use common::*;
use cudann::gpu::memory::{Place, classify};
use cudann::*;
use cudarc::driver::sys;

/// Library streams wait for the legacy default stream (cudaStreamCreate's
/// flags), so while one is being captured no other thread may use the legacy
/// stream: the capture holds this lock alone, every other test shares it.
static LEGACY_STREAM: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn malloc(bytes: usize) -> *mut c_void {
    let mut ptr = NULL;
    assert_ok(unsafe { cudann_malloc(&mut ptr, bytes as i64) });
    ptr
}

fn upload(x: &[f32]) -> *mut f32 {
    let p = malloc(x.len() * 4);
    assert_ok(unsafe { cudann_memcpy(p, x.as_ptr().cast(), (x.len() * 4) as i64, NULL) });
    p.cast()
}

fn download(p: *const f32, n: usize) -> Vec<f32> {
    let mut host = poisoned(n);
    assert_ok(unsafe { cudann_memcpy(host.as_mut_ptr().cast(), p.cast(), (n * 4) as i64, NULL) });
    host
}

fn free_memory() -> i64 {
    let (mut free, mut total) = (0i64, 0i64);
    assert_ok(unsafe { cudann_mem_info(&mut free, &mut total) });
    free
}

#[test]
fn library_memory_is_device_memory_that_ops_read_directly() {
    if !present("library_memory_is_device_memory_that_ops_read_directly") {
        return;
    }
    let _legacy = LEGACY_STREAM.read().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(7);
    let (rows, cols) = (37, 1001);
    let x = rng.vec(rows * cols, 3.0);
    let dx = upload(&x);
    let dy = malloc(x.len() * 4).cast::<f32>();
    assert_eq!(classify(dx as usize), Place::Device(0));
    let mut pinned = NULL;
    assert_ok(unsafe { cudann_malloc_host(&mut pinned, 4096) });
    assert_eq!(classify(pinned as usize), Place::Host, "pinned host memory");
    let mut stream = NULL;
    let mut want = poisoned(x.len());
    unsafe {
        assert_ok(cudann_stream_create(&mut stream));
        assert_ok(cuda_softmax(dx, dy, rows as i32, cols as i32, stream));
        assert_ok(cudann_stream_synchronize(stream));
        assert_ok(cuda_softmax(x.as_ptr(), want.as_mut_ptr(), rows as i32, cols as i32, NULL));
    }
    assert_close(&download(dy, x.len()), &f64s(&want), 1e-6, 1e-9, "softmax on library memory vs the CPU");
    unsafe {
        assert_ok(cudann_stream_destroy(stream));
        assert_ok(cudann_free(dx.cast()));
        assert_ok(cudann_free(dy.cast()));
        assert_ok(cudann_free(pinned));
    }
}

#[test]
fn a_library_stream_is_a_real_stream_for_graph_capture() {
    if !present("a_library_stream_is_a_real_stream_for_graph_capture") {
        return;
    }
    let _capturing = LEGACY_STREAM.write().unwrap_or_else(|e| e.into_inner());
    let x: Vec<f32> = (0..10_000).map(|i| i as f32 * 1e-3).collect();
    let (dx, dy, dz) = (upload(&x), malloc(40_000).cast::<f32>(), malloc(40_000).cast::<f32>());
    let mut stream = NULL;
    unsafe {
        assert_ok(cudann_stream_create(&mut stream));
        let s: sys::CUstream = stream.cast();
        assert_eq!(sys::cuStreamBeginCapture_v2(s, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), sys::CUresult::CUDA_SUCCESS);
        assert_ok(cuda_scale(dx, dy, 2.0, 10_000, stream));
        assert_ok(cudann_memcpy(dz.cast(), dy.cast(), 40_000, stream));
        assert_ok(cuda_add(dz, dx, dz, 10_000, stream));
        let mut graph = std::ptr::null_mut();
        assert_eq!(sys::cuStreamEndCapture(s, &mut graph), sys::CUresult::CUDA_SUCCESS);
        let mut exec = std::ptr::null_mut();
        assert_eq!(sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0), sys::CUresult::CUDA_SUCCESS);
        assert_ok(cudann_memset(dz.cast(), 0, 40_000, stream));
        assert_eq!(sys::cuGraphLaunch(exec, s), sys::CUresult::CUDA_SUCCESS);
        assert_ok(cudann_stream_synchronize(stream));
        sys::cuGraphExecDestroy(exec);
        sys::cuGraphDestroy(graph);
        assert_ok(cudann_stream_destroy(stream));
    }
    assert_eq!(download(dz, 10_000), x.iter().map(|v| v * 2.0 + v).collect::<Vec<_>>());
    unsafe {
        for p in [dx, dy, dz] {
            assert_ok(cudann_free(p.cast()));
        }
    }
}

#[test]
fn pointers_from_elsewhere_interoperate_but_are_not_freed() {
    if !present("pointers_from_elsewhere_interoperate_but_are_not_freed") {
        return;
    }
    let _legacy = LEGACY_STREAM.read().unwrap_or_else(|e| e.into_inner());
    let x: Vec<f32> = (0..5000).map(|i| (i as f32).sin()).collect();
    let theirs = Dev::from(&x);
    let ours = malloc(20_000).cast::<f32>();
    unsafe {
        assert_ok(cudann_memcpy(ours.cast(), theirs.p().cast(), 20_000, NULL));
        assert_ok(cuda_silu(ours, theirs.p(), 5000, NULL));
        assert_invalid(cudann_free(theirs.p().cast()), "cudann_free", "not the start of a live allocation");
    }
    let mut want = poisoned(5000);
    assert_ok(unsafe { cuda_silu(x.as_ptr(), want.as_mut_ptr(), 5000, NULL) });
    assert_close(&theirs.read(), &f64s(&want), 1e-6, 1e-9, "silu from library memory into a driver allocation");
    assert_ok(unsafe { cudann_free(ours.cast()) });
}

#[test]
fn free_gives_device_memory_back() {
    if !present("free_gives_device_memory_back") {
        return;
    }
    let _legacy = LEGACY_STREAM.read().unwrap_or_else(|e| e.into_inner());
    let gib = 1usize << 30;
    let start = free_memory();
    for round in 0..5 {
        let p = malloc(4 * gib);
        let during = free_memory();
        assert!(start - during >= 4 * gib as i64, "round {round}: {} MiB taken", (start - during) >> 20);
        assert_ok(unsafe { cudann_memset(p, 0, (4 * gib) as i64, NULL) });
        assert_ok(unsafe { cudann_free(p) });
        let after = free_memory();
        assert!(start - after < 64 << 20, "round {round}: {} MiB still taken after free", (start - after) >> 20);
    }
}

#[test]
fn each_thread_has_its_current_device_and_ops_follow_their_pointers() {
    if !present("each_thread_has_its_current_device_and_ops_follow_their_pointers") {
        return;
    }
    let _legacy = LEGACY_STREAM.read().unwrap_or_else(|e| e.into_inner());
    let mut count = 0;
    assert_ok(unsafe { cudann_device_count(&mut count) });
    if count < 2 {
        eprintln!("SKIPPED the second-device part: {count} GPU(s)");
    }
    let x: Vec<f32> = (0..4096).map(|i| i as f32 * 0.01 - 20.0).collect();
    let mut want = poisoned(x.len());
    assert_ok(unsafe { cuda_silu(x.as_ptr(), want.as_mut_ptr(), 4096, NULL) });
    let on_zero = upload(&x);
    std::thread::scope(|scope| {
        for device in 0..count.min(8) {
            let x = &x;
            let want = &want;
            let on_zero = on_zero as usize;
            scope.spawn(move || {
                assert_ok(cudann_set_device(device));
                let mut current = -1;
                assert_ok(unsafe { cudann_get_device(&mut current) });
                assert_eq!(current, device);
                let dx = upload(x);
                assert_eq!(classify(dx as usize), Place::Device(device));
                let dy = malloc(x.len() * 4).cast::<f32>();
                assert_ok(unsafe { cuda_silu(dx, dy, 4096, NULL) });
                assert_close(&download(dy, 4096), &f64s(want), 1e-6, 1e-9, "silu on this thread's device");
                if device != 0 {
                    // Operands on two devices: refused, nothing written.
                    assert_invalid(unsafe { cuda_add(dx, on_zero as *const f32, dy, 4096, NULL) }, "cuda_add", "two devices");
                    // Device 0's pointers run on device 0 from this thread, which stays on its device.
                    assert_ok(cudann_set_device(0));
                    assert_ok(cudann_set_device(device));
                    assert_ok(unsafe { cuda_silu(on_zero as *const f32, dx, 4096, NULL) });
                    assert_ok(unsafe { cudann_get_device(&mut current) });
                    assert_eq!(current, device, "a call on another device's pointers leaves the thread's device alone");
                }
                unsafe {
                    assert_ok(cudann_free(dx.cast()));
                    assert_ok(cudann_free(dy.cast()));
                }
            });
        }
    });
    assert_ok(unsafe { cudann_free(on_zero.cast()) });
}
