//! The CPU backend: one module per op family, each a plain function over slices.

pub mod alloc;
pub mod attention;
pub mod convert;
pub mod decode;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
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
pub mod skinny;
pub mod skinny_nn;
pub mod softmax;
