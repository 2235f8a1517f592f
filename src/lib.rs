//! cudann: a drop-in `libcudann.so`. Every entry point of the libcudann C ABI
//! (see `ABI.md`), computed on the CPU today and on the GPU once that backend lands.
//!
//! Module map:
//! * [`abi`]: the `extern "C"` functions, grouped like the ABI; each is a thin shell
//!   (panic boundary, argument checks, dispatch).
//! * [`check`]: argument validation shared by every backend.
//! * [`dispatch`]: backend choice (`CUDANN_BACKEND`) and the seam where the GPU slots in.
//! * [`cpu`]: the CPU kernels.
//! * [`error`]: the error type, its ABI codes and the thread-local last message.

pub mod abi;
pub mod check;
pub mod cpu;
pub mod dispatch;
pub mod error;

pub use abi::*;
