//! Reductions are bitwise reproducible across runs and rayon thread counts.
mod common;
use common::*;
use cudann::*;

/// Runs every reducing op once and returns all outputs as bits.
fn run_all() -> Vec<u32> {
    let mut rng = Rng::new(90);
    let (rows, cols) = (7, 30_001);
    let x = rng.vec(rows * cols, 3.0);
    let mut bits = Vec::new();
    let mut keep = |v: &[f32]| bits.extend(v.iter().map(|f| f.to_bits()));
    let mut y = vec![0.0f32; x.len()];
    unsafe { cuda_softmax(x.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, NULL) };
    keep(&y);
    let w = rng.vec(cols, 1.0);
    unsafe { cuda_rmsnorm(x.as_ptr(), w.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, 1e-6, NULL) };
    keep(&y);
    let targets: Vec<i32> = (0..rows as i32).map(|r| r * 1000).collect();
    let mut loss = [0.0f32];
    unsafe { cuda_cross_entropy_forward(x.as_ptr(), targets.as_ptr(), loss.as_mut_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, NULL) };
    keep(&loss);
    let mut g = x.clone();
    let mut scratch = vec![0.0f32; g.len().div_ceil(256)];
    let mut norm = [0.0f32];
    unsafe { cuda_grad_clip(g.as_mut_ptr(), scratch.as_mut_ptr(), norm.as_mut_ptr(), 1.0, g.len() as i64, NULL) };
    keep(&norm);
    keep(&g);
    let (m, n, k) = (70, 90, 300);
    let mut c = vec![0.0f32; m * n];
    unsafe { cuda_gemm(x.as_ptr(), x[m * k..].as_ptr(), c.as_mut_ptr(), m as i32, n as i32, k as i32, 1.0, 0.0, NULL) };
    keep(&c);
    let seeds: Vec<u64> = (0..rows as u64).collect();
    let mut tokens = vec![0i32; rows];
    unsafe { cuda_topp_sample(x.as_ptr(), tokens.as_mut_ptr(), seeds.as_ptr(), rows as i32, cols as i32, 0.8, 1.0, NULL) };
    bits.extend(tokens.iter().map(|&t| t as u32));
    bits
}

#[test]
fn reductions_are_bitwise_equal_across_runs_and_thread_counts() {
    let reference = with_threads(1, run_all);
    assert_eq!(run_all(), reference, "default pool differs from one thread");
    assert_eq!(with_threads(3, run_all), reference, "three threads differ from one");
    assert_eq!(with_threads(2, run_all), with_threads(2, run_all), "repeated runs differ");
}
