//! Every SIMD level computes right: the op suites below (float64 references,
//! the ABI's tolerances, bitwise determinism) run again in child processes of
//! this binary with `CUDANN_SIMD=scalar`, `avx2` and `avx512` on the CPU
//! backend. They run once more here, in this process, at the default level.
#![cfg(target_arch = "x86_64")]
#[path = "attention.rs"]
mod attention;
#[path = "convert.rs"]
mod convert;
#[path = "decode.rs"]
mod decode;
#[path = "determinism.rs"]
mod determinism;
#[path = "elementwise.rs"]
mod elementwise;
#[path = "embedding.rs"]
mod embedding;
#[path = "gemm.rs"]
mod gemm;
#[path = "half.rs"]
mod half;
#[path = "loss.rs"]
mod loss;
#[path = "moe.rs"]
mod moe;
#[path = "norm.rs"]
mod norm;
#[path = "optim.rs"]
mod optim;
#[path = "softmax.rs"]
mod softmax;

use cudann::cpu::simd::{self, Level};

/// The suites in a child with `CUDANN_SIMD=level`, which the library reads once
/// per process.
fn suites_at(level: &str) {
    let status = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--skip", "pinned_", "--include-ignored"])
        .env("CUDANN_SIMD", level)
        .env("CUDANN_BACKEND", "cpu")
        .status()
        .expect("run the child");
    assert!(status.success(), "the op suites with CUDANN_SIMD={level}");
}

#[test]
fn pinned_scalar() {
    suites_at("scalar");
}

#[test]
fn pinned_avx2() {
    suites_at("avx2");
}

#[test]
fn pinned_avx512() {
    suites_at("avx512");
}

/// The level the kernels run is the one asked for, capped at the CPU's best
/// (checked here against std's own feature detection).
#[test]
#[ignore = "run by the pinned_* tests, in their children"]
fn the_level_asked_for_is_in_use() {
    let cpu = if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        Level::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Level::Avx2
    } else {
        Level::Scalar
    };
    assert_eq!(simd::best(), cpu);
    let asked = match std::env::var("CUDANN_SIMD").expect("CUDANN_SIMD is set in the child").as_str() {
        "scalar" => Level::Scalar,
        "avx2" => Level::Avx2,
        _ => Level::Avx512,
    };
    assert_eq!(simd::level(), asked.min(cpu), "{}", simd::choice().why);
}
