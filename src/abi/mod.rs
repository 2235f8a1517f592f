//! The exported C ABI, grouped like ABI.md. Every function is a thin shell:
//! panic boundary (`ffi_fn!`) -> argument checks (nothing written on failure) ->
//! `dispatch::run`.

pub(crate) mod boundary;
pub mod attention;
pub mod checkpoint;
pub mod comm;
pub mod convert;
pub mod decode;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod loss;
pub mod memory;
pub mod moe;
pub mod norm;
pub mod optim;
pub mod rope;
pub mod services;
pub mod softmax;

pub use attention::*;
pub use checkpoint::*;
pub use comm::*;
pub use convert::*;
pub use decode::*;
pub use elementwise::*;
pub use embedding::*;
pub use gemm::*;
pub use loss::*;
pub use memory::*;
pub use moe::*;
pub use norm::*;
pub use optim::*;
pub use rope::*;
pub use services::*;
pub use softmax::*;

/// Done (or, for an all-device-pointer call, enqueued on `stream`).
pub const CUDANN_SUCCESS: i32 = 0;
/// The GPU backend was demanded (`CUDANN_BACKEND=cuda`) but no usable GPU exists,
/// or device pointers were passed and CUDA is unusable.
pub const CUDANN_NOT_AVAILABLE: i32 = -1;
/// A bad argument: NULL with a non-empty size, negative or overflowing size,
/// out-of-range parameter, overlapping buffers. Nothing was written.
/// ("Overlaps" everywhere below: an output may be exactly the buffer of an input
/// of the same size, an in-place call computed from the input's old values; any
/// other overlap of an output with a buffer, or of two outputs, is -2.)
pub const CUDANN_INVALID_VALUE: i32 = -2;
/// A kernel or library call failed on the device.
pub const CUDANN_LAUNCH_FAILED: i32 = -3;
/// Device or staging memory could not be allocated.
pub const CUDANN_OUT_OF_MEMORY: i32 = -4;
/// A bug inside the library (e.g. a caught panic); never a crash.
pub const CUDANN_INTERNAL: i32 = -5;

/// Data type of a tensor passed as `void*` (`cudann_gemm_ex` and the `_ex`-style
/// ops that take a data-type argument): IEEE binary32.
pub const CUDANN_F32: i32 = 0;
/// IEEE binary16 (cudann_convert, cudann_gemm_ex and the `_ex` ops compute it).
pub const CUDANN_F16: i32 = 1;
/// bfloat16 (cudann_convert, cudann_gemm_ex and the `_ex` ops compute it).
pub const CUDANN_BF16: i32 = 2;
/// 32-bit signed integers (checkpoint tensors).
pub const CUDANN_I32: i32 = 3;
/// 64-bit signed integers (checkpoint tensors).
pub const CUDANN_I64: i32 = 4;
/// IEEE binary64 (checkpoint tensors).
pub const CUDANN_F64: i32 = 5;
/// Bytes (checkpoint tensors).
pub const CUDANN_U8: i32 = 6;
