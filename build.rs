//! Generates the C header from the Rust source with cbindgen, into OUT_DIR.
//! `include/cudann.h` is the committed copy; a test fails when they differ and
//! `make header` refreshes it. Also gives the shared library its soname and
//! export list.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("cudann.h");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml is valid");
    cbindgen::generate_with_config(&crate_dir, config).expect("cbindgen parses src/").write_to_file(&out);
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=cudann.map");
    // libcudann.so.MAJOR: what programs linked against it ask the loader for
    // (`make install` adds the libcudann.so.MAJOR and libcudann.so links).
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcudann.so.{major}");
    // rustc already exports exactly the crate's #[no_mangle] functions (its own
    // version script, `local: *` for the rest); cudann.map restates that only the
    // ABI's namespaces may be global, and tests/exports.rs checks the exports
    // against the header both ways.
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={crate_dir}/cudann.map");
}
