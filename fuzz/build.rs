//! Generates the fuzzer's table of entry points from include/cudann.h, so every
//! export the header declares is driven, new ones included, with no list to
//! keep in step by hand. Each parameter's C type (and, for `int`, its name)
//! picks how the fuzz input fills it; see `Args` in src/lib.rs.

use std::fmt::Write;

fn main() {
    let header = concat!(env!("CARGO_MANIFEST_DIR"), "/../include/cudann.h");
    println!("cargo:rerun-if-changed={header}");
    let text = std::fs::read_to_string(header).expect("include/cudann.h");
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join(" ");
    let mut names = Vec::new();
    let mut arms = String::new();
    for decl in code.split(';') {
        let Some(open) = decl.find('(') else { continue };
        let head = decl[..open].trim();
        let Some(name) = head.strip_prefix("int32_t ").map(str::trim) else { continue };
        let params = decl[open + 1..decl.rfind(')').expect("a closing parenthesis")].trim();
        // Checkpoint calls take paths and handles: their own target drives them.
        if params == "void" || params.contains("char") || params.contains("Cudann") {
            continue;
        }
        let args: Vec<String> = params.split(',').map(|p| argument(name, p.trim())).collect();
        writeln!(arms, "        {} => cudann::{name}({}),", names.len(), args.join(", ")).unwrap();
        names.push(format!("{name:?}"));
    }
    let out = format!(
        "/// Every entry point the fuzzer drives, in header order.\npub const ENTRY_POINTS: &[&str] = &[{}];\n\n\
         /// Calls entry point `index` with arguments drawn from `a`.\npub unsafe fn call(index: usize, a: &mut crate::Args) -> i32 {{\n    unsafe {{ match index {{\n{arms}        _ => unreachable!(),\n    }} }}\n}}\n",
        names.join(", ")
    );
    std::fs::write(std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("calls.rs"), out).unwrap();
}

/// The expression that draws one parameter (`type name`) of `function` from
/// the input.
fn argument(function: &str, param: &str) -> String {
    let split = param.rfind(|c: char| c == ' ' || c == '*').expect("a named parameter") + 1;
    let (ty, name) = (param[..split].split_whitespace().collect::<Vec<_>>().join(" "), &param[split..]);
    match ty.as_str() {
        // cuda_scatter_add cannot know its table's height: the caller keeps
        // every index below it (the ABI's rule), so its indices are small.
        "const int *" if function == "cuda_scatter_add" => "a.small_indices()".into(),
        "const float *" => "a.input::<f32>()".into(),
        "float *" => "a.output::<f32>()".into(),
        "const int *" | "const int32_t *" => "a.input::<i32>()".into(),
        "int *" | "int32_t *" => "a.output::<i32>()".into(),
        "const uint64_t *" => "a.input::<u64>()".into(),
        "const void *" => "a.input::<f32>().cast()".into(),
        "void *" if name == "stream" => "std::ptr::null_mut()".into(),
        "void *" => "a.output::<f32>().cast()".into(),
        // Out-pointers of the memory calls (an allocation's or stream's address,
        // memory figures).
        "void **" => "a.output::<*mut std::ffi::c_void>()".into(),
        "int64_t *" => "a.output::<i64>()".into(),
        "int" if name == "dtype" || name.ends_with("_type") => "a.dtype()".into(),
        "int" if name.starts_with("trans") || name.starts_with("is_") => "a.flag()".into(),
        "int" => "a.dim()".into(),
        "int64_t" => "a.count()".into(),
        "float" => "a.float()".into(),
        other => panic!("fuzz/build.rs: no rule for parameter type {other:?} ({param})"),
    }
}
