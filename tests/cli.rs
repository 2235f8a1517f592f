//! The `cudann` command (src/bin/cudann.rs): info, a quick bench, bad usage.

use std::process::{Command, Output};

fn cudann(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cudann")).args(args).envs(env.iter().copied()).output().expect("run the cudann command")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}, stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

#[test]
fn info_names_the_version_and_the_backend() {
    let text = stdout(&cudann(&["info"], &[]));
    assert_eq!(text.lines().next(), Some(format!("cudann {}", env!("CARGO_PKG_VERSION")).as_str()), "{text}");
    let backend = text.lines().find_map(|l| l.strip_prefix("backend: ")).unwrap_or_else(|| panic!("no backend line:\n{text}"));
    assert!(backend.starts_with("cpu: ") || backend.starts_with("cuda: "), "{text}");
    // Either a GPU line per device, or why there is none.
    assert!(text.lines().any(|l| l.starts_with("gpu 0: ") || l.starts_with("gpu: none (")), "{text}");
    if backend.starts_with("cuda: ") {
        assert!(text.contains("ptx modules loaded: elementwise") && text.contains("cublas: "), "{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("cpu: ") && l.contains("threads")), "{text}");

    let text = stdout(&cudann(&["info"], &[("CUDANN_BACKEND", "cpu")]));
    assert!(text.contains("backend: cpu: CUDANN_BACKEND=cpu\ngpu: not probed (CUDANN_BACKEND=cpu)\n"), "{text}");
}

#[test]
fn info_names_the_simd_level_and_why() {
    let text = stdout(&cudann(&["info"], &[("CUDANN_SIMD", "scalar")]));
    assert!(text.contains("; SIMD kernels: scalar (CUDANN_SIMD=scalar), "), "{text}");
    let text = stdout(&cudann(&["info"], &[("CUDANN_SIMD", "sse9")]));
    assert!(text.contains(" (CUDANN_SIMD='sse9' is not avx512, avx2, scalar or auto: ignored, the best this CPU has)"), "{text}");
}

#[test]
fn quick_bench_prints_a_row_per_op() {
    let text = stdout(&cudann(&["bench", "silu", "gemm", "--quick"], &[]));
    for (op, unit) in [("silu", "GB/s"), ("gemm", "GFLOP/s")] {
        let row = text.lines().find(|l| l.starts_with(op)).unwrap_or_else(|| panic!("no {op} row:\n{text}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        let ms: f64 = fields[2].parse().unwrap_or_else(|_| panic!("no time in '{row}'"));
        let rate: f64 = fields[3].parse().unwrap_or_else(|_| panic!("no throughput in '{row}'"));
        assert!(ms > 0.0 && rate > 0.0 && fields[4] == unit, "{row}");
    }
}

#[test]
fn compare_adds_numpy_or_says_why_not() {
    let text = stdout(&cudann(&["bench", "add", "--quick", "--compare"], &[]));
    let row = text.lines().find(|l| l.starts_with("add")).unwrap_or_else(|| panic!("no add row:\n{text}"));
    let numpy_column = row.ends_with('x') && text.contains("vs numpy");
    assert!(numpy_column || text.contains("(no numpy baseline: "), "{text}");
}

#[test]
fn bad_usage_exits_2_with_a_message() {
    for (args, message) in [
        (&[][..], "missing command"),
        (&["frobnicate"][..], "unknown command 'frobnicate'"),
        (&["bench", "nosuchop"][..], "unknown op 'nosuchop'"),
        (&["bench", "--fast"][..], "unknown option '--fast'"),
        (&["info", "extra"][..], "info takes no arguments"),
    ] {
        let out = cudann(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message) && stderr.contains("usage: cudann"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
