//! The CPU backend: one module per op family, each a plain function over slices.

pub mod alloc;
pub mod attention;
pub mod convert;
pub mod decode;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub mod gemm_bf16;
pub mod loss;
pub mod math;
pub mod memory;
pub mod moe;
pub mod norm;
pub mod optim;
pub mod par;
pub mod reduce;
pub mod rng;
pub mod rope;
pub mod simd;
pub mod skinny;
pub mod skinny_nn;
pub mod softmax;
#[cfg(target_arch = "x86_64")]
pub mod softmax_avx512;
pub mod transpose;
