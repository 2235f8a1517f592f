//! libFuzzer target: arbitrary bytes as a safetensors file, opened, listed and
//! read through the library (fuzz/src/lib.rs). `make fuzz` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scratch = std::env::temp_dir().join(format!("cudann-fuzz-{}.safetensors", std::process::id()));
    if let Err(broken) = cudann_fuzz::check_checkpoint(data, &scratch) {
        panic!("contract broken: {broken}");
    }
});
