//! Generates the C header from the Rust source with cbindgen, into OUT_DIR.
//! `include/cudann.h` is the committed copy; a test fails when they differ and
//! `make header` refreshes it.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("cudann.h");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml is valid");
    cbindgen::generate_with_config(&crate_dir, config).expect("cbindgen parses src/").write_to_file(&out);
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
}
