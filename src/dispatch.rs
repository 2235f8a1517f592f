//! Where a call runs. Today the CPU is the only backend; the GPU backend plugs in
//! here (pointer classification, cost model, staging) without the ABI layer changing.

use std::ffi::c_void;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// What `CUDANN_BACKEND` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    Auto,
    Cpu,
    Cuda,
}

/// The caller's `CUstream` (NULL = default stream); the CPU backend ignores it.
pub type Stream = *mut c_void;

fn parse(value: Option<&str>) -> std::result::Result<Requested, String> {
    match value.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("auto") => Ok(Requested::Auto),
        Some("cpu") => Ok(Requested::Cpu),
        Some("cuda") | Some("gpu") => Ok(Requested::Cuda),
        Some(other) => Err(format!("CUDANN_BACKEND must be auto, cpu or cuda (got '{other}')")),
    }
}

/// `CUDANN_BACKEND`, read once at the first call (the environment of a running
/// process is not re-read; set it before loading the library).
pub fn requested() -> Result<Requested> {
    static REQUESTED: OnceLock<std::result::Result<Requested, String>> = OnceLock::new();
    REQUESTED
        .get_or_init(|| parse(std::env::var("CUDANN_BACKEND").ok().as_deref()))
        .clone()
        .map_err(Error::InvalidValue)
}

/// Runs one validated call on the chosen backend. `work` is the number of output
/// elements; a call with none is a successful no-op on every backend.
pub fn run(stream: Stream, work: usize, cpu: impl FnOnce() -> Result<()>) -> Result<()> {
    let _ = stream; // only a GPU backend enqueues on streams (ABI.md: ignored on the CPU)
    if work == 0 {
        return Ok(());
    }
    match requested()? {
        Requested::Cuda => Err(Error::NotAvailable(
            "CUDANN_BACKEND=cuda, but this build has no GPU backend yet".to_string(),
        )),
        Requested::Auto | Requested::Cpu => cpu(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!(parse(None), Ok(Requested::Auto));
        assert_eq!(parse(Some(" CPU ")), Ok(Requested::Cpu));
        assert_eq!(parse(Some("cuda")), Ok(Requested::Cuda));
        assert!(parse(Some("tpu")).unwrap_err().contains("'tpu'"));
    }
}
