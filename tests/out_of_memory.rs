//! A host allocation the library cannot make is -4 with a message, never an
//! abort: with the address space capped, an in-place softmax whose row copy
//! does not fit fails cleanly and the process carries on. Its own test binary,
//! because the cap applies to the whole process.

use cudann::*;

#[test]
fn a_failed_host_allocation_is_out_of_memory() {
    // Host memory is the CPU backend's: on a GPU machine `auto` would stage
    // these rows through the GPU (whose buffers are kept by design).
    // SAFETY: this binary's only test, before the library's first call; no
    // other thread reads the environment meanwhile.
    unsafe { std::env::set_var("CUDANN_BACKEND", "cpu") };
    let (rows, cols) = (2, 1usize << 26); // 256 MiB a row, 512 MiB in all
    let mut x = vec![0.5f32; rows * cols];
    let mut small = vec![1.0f32; 64];
    let null = std::ptr::null_mut();
    unsafe {
        // Start every worker thread before the cap (their stacks need address space).
        assert_eq!(cuda_softmax(small.as_ptr(), small.as_mut_ptr(), 8, 8, null), 0);
        rayon::broadcast(|_| ());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kb: u64 = status.lines().find(|l| l.starts_with("VmSize:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap();
        // Room for small allocations, not for a 256 MiB row copy.
        let cap = (vm_kb << 10) + (64 << 20);
        let limit = libc::rlimit { rlim_cur: cap, rlim_max: libc::RLIM_INFINITY };
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
        let code = cuda_softmax(x.as_ptr(), x.as_mut_ptr(), rows as i32, cols as i32, null);
        let message = error::last_error();
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        libc::setrlimit(libc::RLIMIT_AS, &unlimited);
        assert_eq!(code, CUDANN_OUT_OF_MEMORY, "{message}");
        assert!(message.starts_with("cuda_softmax: could not allocate"), "{message}");
        // The library still works afterwards.
        assert_eq!(cuda_softmax(small.as_ptr(), small.as_mut_ptr(), 8, 8, null), 0);
    }
    x[0] = 0.0; // keep the buffer alive until after the call
}
