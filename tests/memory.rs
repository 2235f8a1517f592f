//! Device memory, copies, streams and devices through the C ABI, on whichever
//! backend this machine has (the same program must run on both): allocate,
//! copy in, run ops on the buffers, copy out, free; and every misuse case is
//! -2 with nothing touched. CPU-only facts (host memory, zeroed, 64-byte
//! aligned; no devices) are checked where the backend is the CPU.
mod common;
use std::ffi::{CStr, c_void};

use common::*;
use cudann::*;

fn backend() -> String {
    unsafe { CStr::from_ptr(cudann_backend()) }.to_string_lossy().into_owned()
}

fn on_cpu() -> bool {
    backend().starts_with("cpu:")
}

/// A library allocation of `n` floats, freed on drop.
struct Buf {
    ptr: *mut c_void,
    n: usize,
}

impl Buf {
    fn new(n: usize) -> Self {
        let mut ptr = std::ptr::dangling_mut();
        assert_ok(unsafe { cudann_malloc(&mut ptr, (n * 4) as i64) });
        Buf { ptr, n }
    }
    fn from(x: &[f32]) -> Self {
        let b = Buf::new(x.len());
        assert_ok(unsafe { cudann_memcpy(b.ptr, x.as_ptr().cast(), (x.len() * 4) as i64, NULL) });
        b
    }
    fn read(&self) -> Vec<f32> {
        let mut host = poisoned(self.n);
        assert_ok(unsafe { cudann_memcpy(host.as_mut_ptr().cast(), self.ptr, (self.n * 4) as i64, NULL) });
        assert_ok(unsafe { cudann_stream_synchronize(NULL) });
        host
    }
    fn f(&self) -> *mut f32 {
        self.ptr.cast()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        assert_ok(unsafe { cudann_free(self.ptr) });
    }
}

#[test]
fn the_backend_says_which_and_why() {
    let text = backend();
    assert!(text.starts_with("cpu: ") || text.starts_with("cuda: "), "{text}");
    if let Some(gpu) = text.strip_prefix("cuda: ") {
        assert!(gpu.contains("driver ") && gpu.contains("sm_") && gpu.contains("(device 0 of "), "{text}");
    }
}

#[test]
fn ops_run_on_library_memory_and_the_values_come_back() {
    let _streams = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(1);
    for n in [1usize, 33, 4097, 1 << 18 | 5] {
        let x = rng.vec(n, 3.0);
        let (bx, by) = (Buf::from(&x), Buf::new(n));
        let mut stream = NULL;
        unsafe {
            assert_ok(cudann_stream_create(&mut stream));
            assert_ok(cuda_silu(bx.f(), by.f(), n as i64, stream));
            assert_ok(cuda_scale(by.f(), by.f(), 2.0, n as i64, stream));
            assert_ok(cudann_stream_synchronize(stream));
            assert_ok(cudann_stream_destroy(stream));
        }
        let want: Vec<f64> = f64s(&x).iter().map(|&v| 2.0 * v / (1.0 + (-v).exp())).collect();
        assert_close(&by.read(), &want, 1e-6, 1e-7, "silu then scale on library memory");
        assert_eq!(bx.read(), x, "the input is unchanged");
    }
}

#[test]
fn host_allocations_are_aligned_and_zeroed_on_the_cpu() {
    if !on_cpu() {
        return;
    }
    for bytes in [1i64, 7, 64, 100_000] {
        let mut ptr = NULL;
        unsafe {
            assert_ok(cudann_malloc(&mut ptr, bytes));
            assert_eq!(ptr as usize % 64, 0, "{bytes} bytes");
            assert!(std::slice::from_raw_parts(ptr as *const u8, bytes as usize).iter().all(|&b| b == 0));
            assert_ok(cudann_free(ptr));
            assert_ok(cudann_malloc_host(&mut ptr, bytes));
            assert_eq!(ptr as usize % 64, 0, "{bytes} bytes (host)");
            assert_ok(cudann_free(ptr));
        }
    }
    let (mut count, mut device) = (-1, -1);
    unsafe {
        assert_ok(cudann_device_count(&mut count));
        assert_ok(cudann_get_device(&mut device));
    }
    assert_eq!((count, device), (0, 0), "the CPU backend has no GPUs and device 0 current");
}

#[test]
fn copies_between_host_pinned_and_library_memory() {
    let _streams = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(2);
    let n = 100_003;
    let x = rng.vec(n, 1.0);
    let (a, b) = (Buf::from(&x), Buf::new(n));
    let mut pinned = NULL;
    let mut stream = NULL;
    unsafe {
        assert_ok(cudann_malloc_host(&mut pinned, (n * 4) as i64));
        assert_ok(cudann_stream_create(&mut stream));
        // library -> library, then -> pinned host, asynchronously on the stream.
        assert_ok(cudann_memcpy(b.ptr, a.ptr, (n * 4) as i64, stream));
        assert_ok(cudann_memcpy(pinned, b.ptr, (n * 4) as i64, stream));
        assert_ok(cudann_stream_synchronize(stream));
        assert_eq!(std::slice::from_raw_parts(pinned as *const f32, n), &x[..]);
        // A part at an offset.
        assert_ok(cudann_memcpy(b.f().add(10).cast(), x.as_ptr().add(500).cast(), 400, stream));
        assert_ok(cudann_stream_synchronize(stream));
        let got = b.read();
        assert_eq!(&got[10..110], &x[500..600]);
        assert_eq!(&got[..10], &x[..10]);
        assert_ok(cudann_stream_destroy(stream));
        assert_ok(cudann_free(pinned));
        // Zero bytes: nothing to do, even with NULL pointers.
        assert_ok(cudann_memcpy(std::ptr::null_mut(), std::ptr::null(), 0, NULL));
    }
}

#[test]
fn memset_sets_bytes() {
    let b = Buf::new(1000);
    unsafe {
        assert_ok(cudann_memset(b.ptr, 0x3f, 4000, NULL));
        assert!(b.read().iter().all(|v| v.to_bits() == 0x3f3f3f3f));
        // The low byte of the value, as memset takes it.
        assert_ok(cudann_memset(b.f().add(1).cast(), -1, 8, NULL));
        let got = b.read();
        assert!(got[1].is_nan() && got[1].to_bits() == u32::MAX && got[2].to_bits() == u32::MAX && got[3].to_bits() == 0x3f3f3f3f);
        let mut host = vec![1u8; 100];
        assert_ok(cudann_memset(host.as_mut_ptr().cast(), 7, 50, NULL));
        assert!(host[..50].iter().all(|&v| v == 7) && host[50..].iter().all(|&v| v == 1));
    }
}

#[test]
fn allocation_misuse_is_refused() {
    unsafe {
        // Sizes and the out-pointer.
        let mut ptr = std::ptr::dangling_mut::<c_void>();
        let untouched = ptr;
        assert_invalid(cudann_malloc(&mut ptr, -1), "cudann_malloc", "bytes must be between 0 and 2^60");
        assert_invalid(cudann_malloc(std::ptr::null_mut(), 16), "cudann_malloc", "ptr is NULL");
        assert_eq!(ptr, untouched);
        assert_invalid(cudann_malloc(&mut ptr, (1 << 60) + 1), "cudann_malloc", "bytes must be between 0 and 2^60");
        assert_eq!(cudann_malloc(&mut ptr, 1 << 59), CUDANN_OUT_OF_MEMORY);
        assert_eq!(ptr, untouched, "a failed allocation leaves *ptr alone");
        assert_ok(cudann_malloc(&mut ptr, 0));
        assert!(ptr.is_null(), "zero bytes give NULL");
        assert_ok(cudann_free(std::ptr::null_mut()));
        // Double free, an interior pointer, memory from elsewhere.
        assert_ok(cudann_malloc(&mut ptr, 256));
        assert_invalid(cudann_free(ptr.cast::<u8>().add(4).cast()), "cudann_free", "not the start of a live allocation");
        assert_ok(cudann_free(ptr));
        assert_invalid(cudann_free(ptr), "cudann_free", "already freed");
        let mut mine = vec![0u8; 64];
        assert_invalid(cudann_free(mine.as_mut_ptr().cast()), "cudann_free", "not the start of a live allocation");
    }
}

#[test]
fn copies_past_an_allocation_or_overlapping_are_refused() {
    let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let b = Buf::from(&x);
    let mut host = poisoned(200);
    unsafe {
        assert_invalid(cudann_memcpy(b.ptr, host.as_ptr().cast(), 404, NULL), "cudann_memcpy", "dst: 404 bytes at offset 0 pass the end of a 400-byte allocation");
        assert_invalid(cudann_memcpy(host.as_mut_ptr().cast(), b.f().add(50).cast(), 201, NULL), "cudann_memcpy", "src: 201 bytes at offset 200 pass the end");
        assert_invalid(cudann_memset(b.f().add(99).cast(), 0, 5, NULL), "cudann_memset", "ptr: 5 bytes at offset 396");
        assert_invalid(cudann_memcpy(b.f().add(1).cast(), b.ptr, 8, NULL), "cudann_memcpy", "overlap");
        assert_invalid(cudann_memcpy(b.ptr, host.as_ptr().cast(), -4, NULL), "cudann_memcpy", "bytes must be");
        assert_invalid(cudann_memcpy(std::ptr::null_mut(), host.as_ptr().cast(), 4, NULL), "cudann_memcpy", "dst is NULL");
        assert_invalid(cudann_memcpy(host.as_mut_ptr().cast(), std::ptr::null(), 4, NULL), "cudann_memcpy", "src is NULL");
    }
    assert_untouched(&host, "host after refused copies");
    assert_eq!(b.read(), x, "the allocation after refused copies");
}

/// Held by the tests that create streams: the driver may hand a destroyed
/// stream's address to the next stream created, on any thread.
static STREAMS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn destroyed_and_unknown_streams_are_refused() {
    let _streams = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    let x = vec![1.0f32; 64];
    let b = Buf::from(&x);
    let mut out = poisoned(64);
    let mut stream = NULL;
    unsafe {
        assert_ok(cudann_stream_create(&mut stream));
        assert!(!stream.is_null());
        assert_ok(cudann_stream_destroy(stream));
        assert_invalid(cudann_stream_destroy(stream), "cudann_stream_destroy", "already destroyed");
        assert_invalid(cudann_stream_synchronize(stream), "cudann_stream_synchronize", "was destroyed");
        assert_invalid(cudann_memcpy(out.as_mut_ptr().cast(), b.ptr, 256, stream), "cudann_memcpy", "was destroyed");
        assert_invalid(cudann_memset(b.ptr, 0, 4, stream), "cudann_memset", "was destroyed");
        assert_invalid(cuda_silu(x.as_ptr(), out.as_mut_ptr(), 64, stream), "cuda_silu", "was destroyed");
        assert_invalid(cudann_stream_destroy(NULL), "cudann_stream_destroy", "default stream cannot be destroyed");
        let mut unknown = 0u64;
        assert_invalid(cudann_stream_destroy((&mut unknown as *mut u64).cast()), "cudann_stream_destroy", "not a live stream");
        assert_invalid(cudann_stream_create(std::ptr::null_mut()), "cudann_stream_create", "stream is NULL");
        // A new stream may reuse the address: it is live again.
        let mut again = NULL;
        assert_ok(cudann_stream_create(&mut again));
        assert_ok(cuda_silu(x.as_ptr(), out.as_mut_ptr(), 64, again));
        assert_ok(cudann_stream_synchronize(again));
        assert_ok(cudann_stream_destroy(again));
    }
    assert_eq!(b.read(), x);
}

#[test]
fn devices_and_memory_info() {
    let (mut count, mut device, mut free, mut total) = (-1, -1, -1i64, -1i64);
    unsafe {
        assert_ok(cudann_device_count(&mut count));
        assert_ok(cudann_set_device(0));
        assert_ok(cudann_get_device(&mut device));
        assert_ok(cudann_mem_info(&mut free, &mut total));
        assert_ok(cudann_device_synchronize());
        assert_invalid(cudann_set_device(count.max(1)), "cudann_set_device", "does not exist");
        assert_invalid(cudann_set_device(-1), "cudann_set_device", "does not exist");
        assert_invalid(cudann_device_count(std::ptr::null_mut()), "cudann_device_count", "count is NULL");
        assert_invalid(cudann_mem_info(&mut free, std::ptr::null_mut()), "cudann_mem_info", "total_bytes is NULL");
    }
    assert_eq!(device, 0);
    assert!(count >= 0);
    assert!(0 < free && free <= total, "free {free}, total {total}");
}

#[test]
fn many_threads_allocate_copy_and_free_at_once() {
    let _streams = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            scope.spawn(move || {
                let mut rng = Rng::new(100 + t);
                for round in 0..50 {
                    let n = 1 + rng.below(5000);
                    let x = rng.vec(n, 1.0);
                    let (b, c) = (Buf::from(&x), Buf::new(n));
                    let mut stream = NULL;
                    unsafe {
                        assert_ok(cudann_stream_create(&mut stream));
                        assert_ok(cuda_add(b.f(), b.f(), c.f(), n as i64, stream));
                        assert_ok(cudann_stream_synchronize(stream));
                        assert_ok(cudann_stream_destroy(stream));
                    }
                    let want: Vec<f32> = x.iter().map(|v| v + v).collect();
                    assert_eq!(c.read(), want, "thread {t} round {round}");
                }
            });
        }
    });
}

/// Runs one test of this file in a child process with `CUDANN_BACKEND` set
/// (the library reads it once per process).
fn in_child(test: &str, backend: &str) {
    let status = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test, "--ignored", "--nocapture"])
        .env("CUDANN_BACKEND", backend)
        .status()
        .expect("run the child");
    assert!(status.success(), "{test} with CUDANN_BACKEND={backend}");
}

#[test]
fn a_forced_cpu_backend_says_so() {
    in_child("child_forced_cpu", "cpu");
}

#[test]
#[ignore = "run by a_forced_cpu_backend_says_so with CUDANN_BACKEND=cpu"]
fn child_forced_cpu() {
    assert_eq!(backend(), "cpu: CUDANN_BACKEND=cpu");
    let x = vec![2.0f32; 10];
    let b = Buf::from(&x);
    assert_eq!(b.read(), x);
    let mut count = -1;
    assert_ok(unsafe { cudann_device_count(&mut count) });
    assert_eq!(count, 0);
}

#[test]
fn a_demanded_gpu_that_is_missing_is_not_available() {
    if on_cpu() {
        in_child("child_forced_cuda", "cuda");
    }
}

#[test]
#[ignore = "run by a_demanded_gpu_that_is_missing_is_not_available with CUDANN_BACKEND=cuda"]
fn child_forced_cuda() {
    assert!(backend().starts_with("none: CUDANN_BACKEND=cuda, but the GPU is unusable: "), "{}", backend());
    let mut ptr = std::ptr::dangling_mut::<c_void>();
    let untouched = ptr;
    unsafe {
        assert_eq!(cudann_malloc(&mut ptr, 64), CUDANN_NOT_AVAILABLE);
        assert_eq!(ptr, untouched);
        let mut stream = NULL;
        assert_eq!(cudann_stream_create(&mut stream), CUDANN_NOT_AVAILABLE);
        assert_eq!(cudann_device_synchronize(), CUDANN_NOT_AVAILABLE);
    }
}
