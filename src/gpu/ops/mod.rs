//! One launch sequence per op, on device pointers, enqueued on the caller's
//! stream, one file per op family. Launch geometry follows the contract in
//! kernels/README.md.

mod attention;
mod convert;
mod decode;
mod elementwise;
mod embedding;
mod gemm;
mod loss;
mod moe;
mod norm;
mod optim;
mod rope;
mod softmax;
mod sort;

pub use attention::*;
pub use convert::*;
pub use decode::*;
pub use elementwise::*;
pub use embedding::*;
pub use gemm::*;
pub use loss::*;
pub use moe::*;
pub use norm::*;
pub use optim::*;
pub use rope::*;
pub use softmax::*;
pub use sort::*;

use super::driver::Launch;

/// A 1-D launch.
fn line(grid: usize, block: u32) -> Launch {
    Launch {
        grid: (grid.clamp(1, u32::MAX as usize) as u32, 1, 1),
        block: (block, 1, 1),
        shared: 0,
    }
}

/// Grid-stride kernels: 256 threads, about 4 elements per thread, capped grid.
fn strided(n: usize) -> Launch {
    line(n.div_ceil(1024).min(65535), 256)
}

/// One block per row.
fn per_row(rows: usize, block: u32) -> Launch {
    line(rows, block)
}

fn single(block: u32) -> Launch {
    line(1, block)
}
