//! The committed header must be exactly what cbindgen generates from the source.

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/cudann.h"));
const COMMITTED: &str = "include/cudann.h";

#[test]
fn committed_header_matches_generated() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    if std::env::var_os("CUDANN_BLESS_HEADER").is_some() {
        std::fs::write(&path, GENERATED).expect("write include/cudann.h");
    }
    let committed = std::fs::read_to_string(&path).expect("include/cudann.h exists");
    assert!(committed == GENERATED, "include/cudann.h is stale: run `make header` and commit it");
}

#[test]
fn header_declares_every_export() {
    let exports = [
        "cuda_silu", "cuda_add", "cuda_mul", "cuda_scale", "cuda_softmax", "cuda_softmax_topk",
        "cuda_rmsnorm", "cuda_rmsnorm_residual", "cuda_gemm", "cuda_gemm_batched", "cuda_rope_freqs",
        "cuda_rope_forward", "cuda_rope_qk", "cuda_rope", "cuda_rope_ntk", "cuda_attention_scores",
        "cuda_attention_output", "cuda_flash_attention", "cuda_mqa_attention", "cuda_cross_entropy_forward",
        "cuda_cross_entropy_backward", "cuda_aux_loss_forward", "cuda_adamw_step", "cuda_zero_grad",
        "cuda_grad_clip", "cuda_scatter_add", "cuda_argmax", "cuda_sample", "cuda_topk_sample",
        "cuda_topp_sample", "cudann_last_error", "cudann_version",
    ];
    for name in exports {
        assert!(GENERATED.contains(&format!("{name}(")), "{name} missing from the header");
    }
    // And every export of src/abi, whatever its name.
    let abi = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/abi");
    let mut found = 0;
    for file in std::fs::read_dir(abi).expect("src/abi") {
        let source = std::fs::read_to_string(file.expect("entry").path()).expect("source");
        for rest in source.split("extern \"C\" fn ").skip(1) {
            let name = &rest[..rest.find('(').expect("a parameter list")];
            assert!(GENERATED.contains(&format!("{name}(")), "{name} missing from the header");
            found += 1;
        }
    }
    assert!(found >= exports.len() + 30, "only {found} exports found in src/abi");
    // Nothing internal leaks into the header as a macro.
    for define in GENERATED.lines().filter_map(|l| l.strip_prefix("#define ")) {
        assert!(define.starts_with("CUDANN_"), "unexpected macro in the header: {define}");
    }
    for code in ["CUDANN_F32 0", "CUDANN_F16 1", "CUDANN_BF16 2", "CUDANN_SUCCESS 0", "CUDANN_NOT_AVAILABLE -1", "CUDANN_INVALID_VALUE -2", "CUDANN_LAUNCH_FAILED -3", "CUDANN_OUT_OF_MEMORY -4", "CUDANN_INTERNAL -5"] {
        assert!(GENERATED.contains(&format!("#define {code}")), "{code} missing");
    }
}
