//! Memory the library takes for one call is given back: an in-place softmax
//! over long rows once left a row-sized copy on every worker thread for the
//! life of the process. Its own test binary, so no other test moves the
//! resident size while it is measured.

use cudann::*;

/// The process's resident set in bytes (Linux).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("resident pages");
    pages * 4096
}

#[test]
fn in_place_softmax_of_long_rows_gives_its_copies_back() {
    // Host memory is the CPU backend's: on a GPU machine `auto` would stage
    // these rows through the GPU (whose buffers are kept by design).
    // SAFETY: this binary's only test, before the library's first call; no
    // other thread reads the environment meanwhile.
    unsafe { std::env::set_var("CUDANN_BACKEND", "cpu") };
    let (rows, cols) = (4, 1usize << 25); // 128 MiB a row
    let before = resident_bytes();
    {
        let mut x: Vec<f32> = (0..rows * cols).map(|i| (i % 97) as f32 * 0.01).collect();
        let code = unsafe { cuda_softmax(x.as_ptr(), x.as_mut_ptr(), rows as i32, cols as i32, std::ptr::null_mut()) };
        assert_eq!(code, 0, "{}", error::last_error());
        let total: f64 = x[..cols].iter().map(|&v| v as f64).sum();
        assert!((total - 1.0).abs() < 1e-4, "row 0 sums to {total}");
    }
    let kept = resident_bytes().saturating_sub(before);
    assert!(kept < 32 << 20, "the process kept {} MiB after the call and its buffer were done", kept >> 20);
}
