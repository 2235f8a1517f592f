//! The `cudann` command: `cudann info` says what serves calls on this machine;
//! `cudann bench` times the ops on the active backend, through the C ABI
//! functions (optionally against numpy in the same run).

use std::ffi::{CStr, c_char, c_void};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Command, ExitCode, Stdio};
use std::ptr::null_mut;
use std::time::Instant;

use cudann::{
    cuda_adamw_step, cuda_add, cuda_argmax, cuda_cross_entropy_forward, cuda_gemm, cuda_rmsnorm, cuda_silu, cuda_softmax, cudann_backend,
    cudann_device_synchronize, cudann_free, cudann_last_error, cudann_malloc, cudann_mem_info, cudann_memcpy, cudann_set_device, cudann_version,
};

const USAGE: &str = "usage: cudann info
       cudann bench [OP...] [--quick] [--compare]
       cudann --version | --help

  info     the version, the backend that serves calls and why, the GPUs (their PTX
           modules and cuBLAS), and the CPU features the kernels use
  bench    times each OP on the active backend at a few sizes (ms, GB/s or GFLOP/s);
           OPs: silu add softmax rmsnorm gemm cross_entropy adamw argmax (default: all)
           --quick    the smallest size only
           --compare  also time numpy (python3) in the same run and print the ratio
";

/// Each op and the sizes it is timed at (`--quick`: the first only).
const OPS: &[(&str, &[&[usize]])] = &[
    ("silu", &[&[1 << 16], &[1 << 20], &[1 << 24]]),
    ("add", &[&[1 << 16], &[1 << 20], &[1 << 24]]),
    ("softmax", &[&[64, 1024], &[1024, 4096], &[256, 32768]]),
    ("rmsnorm", &[&[64, 1024], &[1024, 4096], &[4096, 8192]]),
    ("gemm", &[&[128, 128, 128], &[512, 512, 512], &[2048, 2048, 2048]]),
    ("cross_entropy", &[&[64, 1000], &[512, 32000]]),
    ("adamw", &[&[1 << 16], &[1 << 20], &[1 << 24]]),
    ("argmax", &[&[1, 32000], &[64, 32000], &[256, 131072]]),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("info") if args.len() == 1 => info(),
        Some("bench") => match parse_bench(&args[1..]) {
            Ok(options) => bench(&options),
            Err(message) => usage_error(&message),
        },
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version" | "version") => {
            println!("cudann {}", text(cudann_version()));
            ExitCode::SUCCESS
        }
        Some("info") => usage_error("info takes no arguments"),
        Some(other) => usage_error(&format!("unknown command '{other}'")),
        None => usage_error("missing command"),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprint!("cudann: {message}\n{USAGE}");
    ExitCode::from(2)
}

/// A C string from the library (never NULL).
fn text(s: *const c_char) -> String {
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

fn gib(bytes: i64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `cudann_mem_info` of the current device: "X GiB free of Y GiB".
fn memory() -> String {
    let (mut free, mut total) = (0, 0);
    match unsafe { cudann_mem_info(&mut free, &mut total) } {
        0 => format!("{} free of {}", gib(free), gib(total)),
        _ => format!("unknown ({})", text(cudann_last_error())),
    }
}

fn info() -> ExitCode {
    println!("cudann {}", text(cudann_version()));
    let backend = text(cudann_backend());
    println!("backend: {backend}");
    if cudann::dispatch::requested().is_ok_and(|r| r == cudann::dispatch::Requested::Cpu) {
        println!("gpu: not probed (CUDANN_BACKEND=cpu)");
    } else {
        match cudann::gpu::count() {
            Err(why) => println!("gpu: none ({why})"),
            Ok(count) => (0..count).for_each(gpu_info),
        }
    }
    if backend.starts_with("cpu:") {
        println!("memory: {} (host)", memory());
    }
    println!("cpu: {} threads; {}", rayon::current_num_threads(), cpu_features());
    ExitCode::SUCCESS
}

/// One GPU: what it is, its memory, which PTX modules loaded, cuBLAS.
fn gpu_info(ordinal: i32) {
    let described = cudann::gpu::describe(ordinal).unwrap_or_else(|e| format!("unknown ({e})"));
    let gpu = match cudann::gpu::device(ordinal) {
        Ok(gpu) => gpu,
        Err(why) => return println!("gpu {ordinal}: {described}; unusable: {why}"),
    };
    let memory = if cudann_set_device(ordinal) == 0 { memory() } else { text(cudann_last_error()) };
    println!("gpu {ordinal}: {described}, {memory}");
    let (mut loaded, mut skipped) = (Vec::new(), Vec::new());
    for (name, _, kernels, capability) in cudann::gpu::kernels::MODULES {
        // A device that probed fine loaded every module its compute capability runs.
        match kernels.first().is_some_and(|k| gpu.has(k)) {
            true => loaded.push(name.to_string()),
            false => skipped.push(format!("{name} (needs sm_{capability})")),
        }
    }
    println!("  ptx modules loaded: {}", loaded.join(" "));
    if !skipped.is_empty() {
        println!("  ptx modules skipped: {}", skipped.join(" "));
    }
    match cudann::gpu::blas::available() {
        true => println!("  cublas: loaded (GEMM runs on cuBLAS)"),
        false => println!("  cublas: not found (GEMM runs on the tiled PTX kernel)"),
    }
}

/// What the CPU has, the level the `#[simd]` kernels run (`CUDANN_SIMD`) and
/// why; the `gemm` crate's large products pick their own.
fn cpu_features() -> String {
    let simd = cudann::cpu::simd::choice();
    format!("{}; SIMD kernels: {} ({}), large GEMMs: the gemm crate's own pick", detected(), simd.level.name(), simd.why)
}

#[cfg(target_arch = "x86_64")]
fn detected() -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let (avx2, fma, avx512f) = (is_x86_feature_detected!("avx2"), is_x86_feature_detected!("fma"), is_x86_feature_detected!("avx512f"));
    format!("avx2 {}, fma {}, avx512f {}", yes(avx2), yes(fma), yes(avx512f))
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> String {
    std::env::consts::ARCH.to_string()
}

struct BenchOptions {
    ops: Vec<&'static str>,
    quick: bool,
    compare: bool,
}

fn parse_bench(args: &[String]) -> Result<BenchOptions, String> {
    let mut options = BenchOptions { ops: Vec::new(), quick: false, compare: false };
    for arg in args {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--compare" => options.compare = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option '{flag}' for bench")),
            op => match OPS.iter().find(|(name, _)| *name == op) {
                Some((name, _)) => options.ops.push(name),
                None => return Err(format!("unknown op '{op}' (ops: {})", OPS.iter().map(|o| o.0).collect::<Vec<_>>().join(" "))),
            },
        }
    }
    if options.ops.is_empty() {
        options.ops = OPS.iter().map(|o| o.0).collect();
    }
    Ok(options)
}

/// Memory from `cudann_malloc` (device memory on the GPU backend), freed on drop.
struct Buf(*mut c_void);

impl Buf {
    fn from<T: Copy>(host: &[T]) -> Result<Buf, String> {
        let bytes = std::mem::size_of_val(host) as i64;
        let mut ptr = null_mut();
        check(unsafe { cudann_malloc(&mut ptr, bytes) }, "cudann_malloc")?;
        let buf = Buf(ptr);
        check(unsafe { cudann_memcpy(ptr, host.as_ptr().cast(), bytes, null_mut()) }, "cudann_memcpy")?;
        Ok(buf)
    }
    fn f32(&self) -> *mut f32 {
        self.0.cast()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        unsafe { cudann_free(self.0) };
    }
}

fn check(code: i32, what: &str) -> Result<(), String> {
    match code {
        0 => Ok(()),
        _ => Err(format!("{what} returned {code}: {}", text(cudann_last_error()))),
    }
}

/// `n` values in [-1, 1) from a fixed xorshift sequence.
fn noise(n: usize, mut state: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// What one call moves or computes, for its throughput.
enum Work {
    Bytes(f64),
    Flops(f64),
}

/// One op at one size: its buffers, and a closure that makes one call.
struct Case {
    work: Work,
    run: Box<dyn FnMut() -> i32>,
    _buffers: Vec<Buf>,
}

fn case(op: &str, d: &[usize]) -> Result<Case, String> {
    let f = |n: usize, seed: u64| Buf::from(&noise(n, seed));
    let s = null_mut();
    let (work, buffers, run): (Work, Vec<Buf>, Box<dyn FnMut() -> i32>) = match op {
        "silu" => {
            let (x, y) = (f(d[0], 1)?, f(d[0], 2)?);
            let (px, py, n) = (x.f32(), y.f32(), d[0] as i64);
            (Work::Bytes(8.0 * d[0] as f64), vec![x, y], Box::new(move || unsafe { cuda_silu(px, py, n, s) }))
        }
        "add" => {
            let (a, b, c) = (f(d[0], 1)?, f(d[0], 2)?, f(d[0], 3)?);
            let (pa, pb, pc, n) = (a.f32(), b.f32(), c.f32(), d[0] as i64);
            (Work::Bytes(12.0 * d[0] as f64), vec![a, b, c], Box::new(move || unsafe { cuda_add(pa, pb, pc, n, s) }))
        }
        "softmax" => {
            let (x, y) = (f(d[0] * d[1], 1)?, f(d[0] * d[1], 2)?);
            let (px, py, rows, cols) = (x.f32(), y.f32(), d[0] as i32, d[1] as i32);
            (Work::Bytes(8.0 * (d[0] * d[1]) as f64), vec![x, y], Box::new(move || unsafe { cuda_softmax(px, py, rows, cols, s) }))
        }
        "rmsnorm" => {
            let (x, w, y) = (f(d[0] * d[1], 1)?, f(d[1], 2)?, f(d[0] * d[1], 3)?);
            let (px, pw, py, rows, cols) = (x.f32(), w.f32(), y.f32(), d[0] as i32, d[1] as i32);
            let bytes = 8.0 * (d[0] * d[1]) as f64 + 4.0 * d[1] as f64;
            (Work::Bytes(bytes), vec![x, w, y], Box::new(move || unsafe { cuda_rmsnorm(px, pw, py, rows, cols, 1e-6, s) }))
        }
        "gemm" => {
            let (m, n, k) = (d[0], d[1], d[2]);
            let (a, b, c) = (f(m * k, 1)?, f(k * n, 2)?, f(m * n, 3)?);
            let (pa, pb, pc) = (a.f32(), b.f32(), c.f32());
            let flops = 2.0 * (m * n * k) as f64;
            (Work::Flops(flops), vec![a, b, c], Box::new(move || unsafe { cuda_gemm(pa, pb, pc, m as i32, n as i32, k as i32, 1.0, 0.0, s) }))
        }
        "cross_entropy" => {
            let (rows, vocab) = (d[0], d[1]);
            let targets: Vec<i32> = (0..rows).map(|i| (i * 7919 % vocab) as i32).collect();
            let (x, t, loss, lp) = (f(rows * vocab, 1)?, Buf::from(&targets)?, f(1, 2)?, f(rows * vocab, 3)?);
            let (px, pt, pl, plp) = (x.f32(), t.0.cast::<i32>(), loss.f32(), lp.f32());
            let run = move || unsafe { cuda_cross_entropy_forward(px, pt, pl, plp, rows as i32, vocab as i32, s) };
            (Work::Bytes(8.0 * (rows * vocab) as f64), vec![x, t, loss, lp], Box::new(run))
        }
        "adamw" => {
            let n = d[0];
            let (p, g, m, v) = (f(n, 1)?, f(n, 2)?, Buf::from(&vec![0f32; n])?, Buf::from(&vec![0f32; n])?);
            let (pp, pg, pm, pv) = (p.f32(), g.f32(), m.f32(), v.f32());
            let run = move || unsafe { cuda_adamw_step(pp, pg, pm, pv, 1e-4, 0.9, 0.999, 1e-8, 0.01, 1, n as i64, s) };
            (Work::Bytes(28.0 * n as f64), vec![p, g, m, v], Box::new(run))
        }
        "argmax" => {
            let (rows, vocab) = (d[0], d[1]);
            let (x, out) = (f(rows * vocab, 1)?, Buf::from(&vec![0i32; rows])?);
            let (px, po) = (x.f32(), out.0.cast::<i32>());
            let run = move || unsafe { cuda_argmax(px, po, rows as i32, vocab as i32, s) };
            (Work::Bytes(4.0 * (rows * vocab) as f64), vec![x, out], Box::new(run))
        }
        _ => unreachable!("ops are checked when parsed"),
    };
    Ok(Case { work, run, _buffers: buffers })
}

/// Median milliseconds per call: calls in batches of ~20 ms (at least one
/// call each), the device synchronised after each batch, after two warm-ups.
fn time(run: &mut dyn FnMut() -> i32, op: &str) -> Result<f64, String> {
    let mut call = || check(run(), op);
    let sync = || check(cudann_device_synchronize(), "cudann_device_synchronize");
    call()?;
    sync()?;
    let start = Instant::now();
    call()?;
    sync()?;
    let once = start.elapsed().as_secs_f64();
    let reps = ((0.02 / once.max(1e-7)) as usize).clamp(1, 100_000);
    let mut per_call = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..reps {
            call()?;
        }
        sync()?;
        per_call.push(start.elapsed().as_secs_f64() / reps as f64);
    }
    per_call.sort_by(f64::total_cmp);
    Ok(per_call[per_call.len() / 2] * 1e3)
}

/// "[3/8] gemm 512x512x512" over the previous one, where stderr is a terminal.
fn progress(done: usize, total: usize, what: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K[{done}/{total}] {what}");
        let _ = std::io::stderr().flush();
    }
}

fn bench(options: &BenchOptions) -> ExitCode {
    let specs: Vec<(&str, String, &[usize])> = options
        .ops
        .iter()
        .flat_map(|op| {
            let sizes = OPS.iter().find(|o| o.0 == *op).expect("a known op").1;
            let sizes = if options.quick { &sizes[..1] } else { sizes };
            sizes.iter().map(move |d| (*op, d.iter().map(usize::to_string).collect::<Vec<_>>().join("x"), *d))
        })
        .collect();
    println!("cudann {} on {}", text(cudann_version()), text(cudann_backend()));
    let mut failed = false;
    let mut results = Vec::new();
    for (i, (op, size, dims)) in specs.iter().enumerate() {
        progress(i + 1, specs.len(), &format!("{op} {size}"));
        let result = case(op, dims).and_then(|mut c| Ok((time(&mut *c.run, op)?, c.work)));
        failed |= result.is_err();
        results.push(result);
    }
    progress(specs.len(), specs.len(), "done");
    let baseline = if options.compare { numpy(&specs) } else { Ok(Vec::new()) };
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
    let compare = options.compare && baseline.is_ok();
    print!("{:<14} {:>16} {:>10} {:>16}", "op", "size", "ms", "throughput");
    println!("{}", if compare { format!(" {:>10} {:>9}", "numpy ms", "vs numpy") } else { String::new() });
    for (i, ((op, size, _), result)) in specs.iter().zip(&results).enumerate() {
        let (ms, work) = match result {
            Ok(r) => r,
            Err(e) => {
                println!("{op:<14} {size:>16} error: {e}");
                continue;
            }
        };
        let rate = match work {
            Work::Bytes(b) => format!("{:.1} GB/s", b / (ms * 1e-3) / 1e9),
            Work::Flops(f) => format!("{:.1} GFLOP/s", f / (ms * 1e-3) / 1e9),
        };
        print!("{op:<14} {size:>16} {ms:>10.4} {rate:>16}");
        match baseline.as_ref().ok().and_then(|b| b.get(i)) {
            Some(numpy) => println!(" {numpy:>10.4} {:>8.1}x", numpy / ms),
            None => println!(),
        }
    }
    if let Err(why) = &baseline {
        println!("(no numpy baseline: {why})");
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// numpy's equivalent of each op, timed like `time` does, in one python3 run.
const NUMPY: &str = r#"
import sys, time
import numpy as np
rng = np.random.default_rng(0)
def f32(*shape): return rng.uniform(-1, 1, shape).astype(np.float32)
def op(name, d):
    if name == "silu":
        x = f32(d[0]); return lambda: x / (1 + np.exp(-x))
    if name == "add":
        a, b, c = f32(d[0]), f32(d[0]), f32(d[0]); return lambda: np.add(a, b, out=c)
    if name == "softmax":
        x = f32(*d)
        def f(): e = np.exp(x - x.max(axis=1, keepdims=True)); return e / e.sum(axis=1, keepdims=True)
        return f
    if name == "rmsnorm":
        x, w = f32(*d), f32(d[1]); return lambda: x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-6) * w
    if name == "gemm":
        a, b = f32(d[0], d[2]), f32(d[2], d[1]); return lambda: a @ b
    if name == "cross_entropy":
        x, t = f32(*d), rng.integers(0, d[1], d[0])
        def f():
            s = x - x.max(axis=1, keepdims=True); lp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
            return -lp[np.arange(d[0]), t].mean()
        return f
    if name == "adamw":
        p, g, m, v = f32(d[0]), f32(d[0]), np.zeros(d[0], np.float32), np.zeros(d[0], np.float32)
        def f():
            m[:] = 0.9 * m + 0.1 * g; v[:] = 0.999 * v + 0.001 * g * g
            p[:] -= 1e-4 * ((m / 0.1) / (np.sqrt(v / 0.001) + 1e-8) + 0.01 * p)
        return f
    if name == "argmax":
        x = f32(*d); return lambda: x.argmax(axis=1)
def bench(f):
    f(); t = time.perf_counter(); f(); once = time.perf_counter() - t
    reps = min(100000, max(1, int(0.02 / max(once, 1e-7))))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps): f()
        times.append((time.perf_counter() - t) / reps)
    return sorted(times)[2]
for spec in sys.argv[1:]:
    name, size = spec.split(":")
    print(spec, bench(op(name, [int(n) for n in size.split("x")])) * 1e3, flush=True)
"#;

/// numpy's milliseconds per spec, or why there are none.
fn numpy(specs: &[(&str, String, &[usize])]) -> Result<Vec<f64>, String> {
    let probe = Command::new("python3").args(["-c", "import numpy"]).output();
    match probe {
        Err(e) => return Err(format!("python3 not found ({e})")),
        Ok(out) if !out.status.success() => return Err("numpy is not installed for python3 (pip install numpy)".to_string()),
        Ok(_) => {}
    }
    let args: Vec<String> = specs.iter().map(|(op, size, _)| format!("{op}:{size}")).collect();
    let mut child = Command::new("python3")
        .args(["-c", NUMPY])
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let mut times = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| format!("reading python3's output: {e}"))?;
        let ms = line.rsplit(' ').next().and_then(|t| t.parse::<f64>().ok()).ok_or(format!("python3 printed '{line}'"))?;
        times.push(ms);
        progress(times.len(), specs.len(), &format!("numpy {}", args.get(times.len()).map_or("", String::as_str)));
    }
    let status = child.wait().map_err(|e| format!("python3: {e}"))?;
    if !status.success() || times.len() != specs.len() {
        return Err(format!("the numpy baseline failed ({status})"));
    }
    Ok(times)
}
