//! The shared library exports exactly the functions the header declares (no
//! Rust-internal symbol leaks, none is missing), under its soname.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

const HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/cudann.h"));

/// The libcudann.so cargo built with this test: next to the test binary
/// (target/release/deps) or one level up (target/release).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("a directory");
    [deps.join("libcudann.so"), deps.join("../libcudann.so")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("libcudann.so not found next to {}", exe.display()))
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program} (binutils): {e}"));
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Every function the header declares: top-level lines `type name(`.
fn declared() -> BTreeSet<String> {
    HEADER
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()) && !l.starts_with("typedef") && !l.starts_with("extern"))
        .filter_map(|l| l.split_once('(').map(|(before, _)| before.rsplit([' ', '*']).next().expect("a name").to_string()))
        .collect()
}

#[test]
fn exports_are_exactly_the_header_functions() {
    let library = library();
    let declared = declared();
    assert!(declared.len() >= 60 && declared.contains("cuda_silu") && declared.contains("cudann_backend"), "header parse: {declared:?}");
    let exported: BTreeSet<String> = run("nm", &["-D", "--defined-only", library.to_str().expect("UTF-8 path")])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let missing: Vec<_> = declared.difference(&exported).collect();
    let extra: Vec<_> = exported.difference(&declared).collect();
    assert!(missing.is_empty(), "declared in cudann.h but not exported by {}: {missing:?}", library.display());
    assert!(extra.is_empty(), "exported by {} but not declared in cudann.h: {extra:?}", library.display());
}

#[test]
fn soname_is_the_major_version() {
    let dynamic = run("readelf", &["-d", library().to_str().expect("UTF-8 path")]);
    let want = format!("Library soname: [libcudann.so.{}]", env!("CARGO_PKG_VERSION_MAJOR"));
    assert!(dynamic.contains(&want), "no `{want}` in readelf -d:\n{dynamic}");
}
