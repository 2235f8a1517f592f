//! libFuzzer target: every entry point of the header, checked against the
//! contract (fuzz/src/lib.rs). `make fuzz` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = cudann_fuzz::check_call(data) {
        panic!("contract broken: {broken}");
    }
});
