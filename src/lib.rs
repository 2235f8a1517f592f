//! cudann: a drop-in `libcudann.so`. Every entry point of the libcudann C ABI
//! (see `ABI.md`), on the GPU when the operands live there (or it pays off) and
//! on the CPU otherwise.
//!
//! Module map:
//! * [`abi`]: the `extern "C"` functions, grouped like the ABI; each is a thin shell
//!   (panic boundary, argument checks, dispatch).
//! * [`check`]: argument validation shared by every backend.
//! * [`checkpoint`]: safetensors files (reading, writing) behind C handles.
//! * [`dispatch`]: backend choice (`CUDANN_BACKEND`), pointer classification, cost model.
//! * [`cpu`]: the CPU kernels.
//! * [`gpu`]: the GPU backend (driver, PTX kernels, cuBLAS, staging).
//! * [`error`]: the error type, its ABI codes and the thread-local last message.
//! * [`handles`]: the live allocations and streams the library handed out.

// Every `unsafe fn` here has one contract: the caller's pointers are valid for
// the sizes the ABI gives them (docs/ABI.md); it is stated there once rather than
// in a `# Safety` section on each of them.
#![allow(clippy::missing_safety_doc)]
// Many functions carry the C ABI's long parameter lists on to the kernels.
#![allow(clippy::too_many_arguments)]

pub mod abi;
pub mod check;
pub mod checkpoint;
pub mod cpu;
pub mod dispatch;
pub mod error;
pub mod gpu;
pub mod handles;

pub use abi::*;
