//! The precompiled PTX (kernels/ptx, made by scripts/gen-ptx.py) and the kernels
//! the Rust side launches from it.

/// (module name, PTX, kernels the Rust side launches from it, the compute
/// capability it needs as major * 10 + minor: its PTX `.target`).
pub const MODULES: &[(&str, &str, &[&str], u32)] = &[
    (
        "elementwise",
        include_str!("../../kernels/ptx/elementwise.ptx"),
        &[
            "silu_f32", "add_f32", "mul_f32", "scale_f32", "silu_backward_f32", "gelu_f32", "gelu_backward_f32", "swiglu_f32",
            "swiglu_backward_f32", "bias_add_f32", "column_sums_f32",
        ],
        70,
    ),
    ("softmax", include_str!("../../kernels/ptx/softmax.ptx"), &["softmax_f32", "softmax_topk_f32", "softmax_backward_f32", "softmax_backward_cached_f32", "softmax_backward_regs_f32"], 70),
    (
        "norm",
        include_str!("../../kernels/ptx/norm.ptx"),
        &["rmsnorm_f32", "rmsnorm_residual_f32", "layernorm_f32", "norm_xhat_f32", "rmsnorm_backward_chunks_f32",
            "rmsnorm_backward_regs1_f32", "rmsnorm_backward_regs2_f32", "rmsnorm_backward_regs4_f32", "rmsnorm_backward_regs8_f32", "rmsnorm_backward_f32", "layernorm_backward_f32"],
        70,
    ),
    ("embedding", include_str!("../../kernels/ptx/embedding.ptx"), &["embedding_f32", "embedding_h16", "embedding_backward_f32"], 70),
    ("sort", include_str!("../../kernels/ptx/sort.ptx"), &["sort_count_i32", "sort_prefix_sum_i32", "sort_place_i32"], 70),
    (
        "loss",
        include_str!("../../kernels/ptx/loss.ptx"),
        &["log_softmax_f32", "nll_mean_f32", "ce_backward_f32", "aux_counts_f32", "aux_loss_f32"],
        70,
    ),
    (
        "optim",
        include_str!("../../kernels/ptx/optim.ptx"),
        &["adamw_f32", "sumsq_partial_f32", "norm_total_f32", "clip_scale_f32", "scatter_add_f32"],
        70,
    ),
    ("decode", include_str!("../../kernels/ptx/decode.ptx"), &["argmax_f32"], 70),
    ("gemm", include_str!("../../kernels/ptx/gemm.ptx"), &["sgemm_tiled_f32", "gemm_grouped_f32"], 70),
    ("convert", include_str!("../../kernels/ptx/convert.ptx"), &["convert"], 70),
    ("rope", include_str!("../../kernels/ptx/rope.ptx"), &["rope_freqs_f32", "rope_rotate_f32", "rope_rotate_back_f32"], 70),
    (
        "attention",
        include_str!("../../kernels/ptx/attention.ptx"),
        &["attention_scores_f32", "attention_output_f32", "flash_attention_f32", "flash_attention_d64_f32", "kv_cache_write_f32", "kv_cache_write_h16",
          "attention_forward_f32", "attention_forward_d64_f32", "attention_backward_d32_f32", "attention_backward_d64_f32", "attention_backward_d128_f32", "attention_backward_d256_f32",
          "attention_backward_dr_f32", "attention_backward_fused_d32_f32", "attention_backward_fused_d64_f32", "attention_backward_fused_d128_f32",
          "attention_decode_r1_d64_f32", "attention_decode_r2_d64_f32", "attention_decode_r4_d64_f32", "attention_decode_r8_d64_f32",
          "attention_decode_r1_d128_f32", "attention_decode_r2_d128_f32", "attention_decode_r4_d128_f32", "attention_decode_r8_d128_f32",
          "attention_decode_r1_d256_f32", "attention_decode_r2_d256_f32", "attention_decode_r4_d256_f32", "attention_decode_r8_d256_f32", "attention_decode_combine_f32", "attention_decode_combine_many_f32"],
        70,
    ),
    (
        "moe",
        include_str!("../../kernels/ptx/moe.ptx"),
        &[
            "moe_router_backward_f32", "aux_loss_backward_f32", "moe_scatter_f32",
            "moe_rows_of_pairs_i32", "moe_gather_sum_f32", "moe_combine_backward_f32",
        ],
        70,
    ),
    ("sample", include_str!("../../kernels/ptx/sample.ptx"), &["sample_f32", "topk_sample_f32", "topp_sample_f32"], 70),
    // cp.async (decode attention's tiles): loaded on sm_80 and later only.
    (
        "attention_sm80",
        include_str!("../../kernels/ptx/attention_sm80.ptx"),
        &[
            "attention_decode_async_r1_d64_f32", "attention_decode_async_r2_d64_f32", "attention_decode_async_r4_d64_f32", "attention_decode_async_r8_d64_f32",
            "attention_decode_async_r1_d128_f32", "attention_decode_async_r2_d128_f32", "attention_decode_async_r4_d128_f32", "attention_decode_async_r8_d128_f32",
            "attention_decode_async_r1_d256_f32", "attention_decode_async_r2_d256_f32", "attention_decode_async_r4_d256_f32", "attention_decode_async_r8_d256_f32",
        ],
        80,
    ),
    // Tensor cores (mma.sync TF32): loaded on sm_80 and later only.
    ("attention_tf32", include_str!("../../kernels/ptx/attention_tf32.ptx"), &["flash_attention_tf32_d64", "attention_backward_fused_tf32_d64"], 80),
    // Thread-block clusters: sm_90 and later only.
    ("sample_cluster", include_str!("../../kernels/ptx/sample_cluster.ptx"), &["sample_cluster_f32", "topk_cluster_f32", "topp_cluster_f32"], 90),
];
