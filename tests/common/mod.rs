//! Shared helpers for the integration tests: a seeded generator, float64
//! comparisons, poisoned outputs and error-code checks.
#![allow(dead_code)] // each test binary uses a different subset

pub mod device;

use std::ffi::c_void;

pub const NULL: *mut c_void = std::ptr::null_mut();
pub const INVALID: i32 = cudann::CUDANN_INVALID_VALUE;
/// Written into outputs before a call that must fail; must survive it.
pub const POISON: f32 = -7.75e20;
/// Awkward sizes: around SIMD widths, blocks and primes.
pub const SIZES: [usize; 6] = [1, 31, 33, 1000, 4097, 40_000];

/// SplitMix64: small, seeded, independent of the library's own generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
    /// `n` normal values times `scale`.
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize
    }
}

pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// |got - want| <= atol + rtol * |want| elementwise (same NaN/inf placement).
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g as f64 == w
        } else {
            (g as f64 - w).abs() <= atol + rtol * w.abs()
        };
        assert!(ok, "{what}[{i}]: got {g}, want {w}");
    }
}

/// A buffer of `n` poison values.
pub fn poisoned(n: usize) -> Vec<f32> {
    vec![POISON; n]
}

/// Asserts that a buffer still holds only poison.
#[track_caller]
pub fn assert_untouched(buf: &[f32], what: &str) {
    assert!(buf.iter().all(|&v| v.to_bits() == POISON.to_bits()), "{what} was modified by a failing call");
}

/// Asserts a -2 return whose message names the function and contains `fragment`.
#[track_caller]
pub fn assert_invalid(code: i32, function: &str, fragment: &str) {
    assert_eq!(code, INVALID, "expected CUDANN_INVALID_VALUE from {function}");
    let message = cudann::error::last_error();
    assert!(message.starts_with(&format!("{function}: ")), "message {message:?} does not name {function}");
    assert!(message.contains(fragment), "message {message:?} lacks {fragment:?}");
}

/// Asserts success and an empty last-error message.
#[track_caller]
pub fn assert_ok(code: i32) {
    assert_eq!(code, 0, "call failed: {}", cudann::error::last_error());
    assert_eq!(cudann::error::last_error(), "");
}

/// Runs `f` on a rayon pool of `threads` threads (the library's parallel loops
/// run on the pool of the calling thread).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool").install(f)
}

/// Row-wise float64 softmax; -inf entries give 0, an all -inf row gives zeros.
pub fn softmax_ref(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return vec![0.0; x.len()];
    }
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// ∂f/∂x by central differences in float64 (the check every backward op's
/// result is held against).
pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * x[i].abs().max(1.0);
            probe[i] = x[i] + h;
            let up = f(&probe);
            probe[i] = x[i] - h;
            let down = f(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Σ a_i b_i: the scalar `⟨dy, f(x)⟩` whose gradient a backward op computes.
pub fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
