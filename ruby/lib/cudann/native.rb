# frozen_string_literal: true

require "ffi"

module Cudann
  # The C ABI as the header declares it: every entry point of cudann.h,
  # attached with FFI. `blocking: true` releases the GVL during a call, so
  # Ruby threads run the library concurrently; each Ruby thread is its own OS
  # thread, so cudann_last_error() read right after a call on the same
  # thread is that call's message.
  module Native
    extend FFI::Library

    # The library: ENV["CUDANN_LIB"] (a path) when set; else an installed
    # libcudann.so (the system's search path); else the build tree this gem
    # source sits in (../../../target/release from here).
    BUILD_TREE_LIB = File.expand_path("../../../target/release/libcudann.so", __dir__)

    def self.library_candidates
      env = ENV.fetch("CUDANN_LIB", "")
      env.empty? ? ["cudann", BUILD_TREE_LIB] : [env]
    end

    begin
      ffi_lib library_candidates
    rescue LoadError => e
      raise LoadError, "cudann: cannot load libcudann (tried #{library_candidates.join(', ')}); " \
                       "install it or set CUDANN_LIB to its path: #{e.message}"
    end

    BLOCKING = { blocking: true }.freeze
    attach_function :cuda_attention_scores, [:pointer, :pointer, :pointer, :int, :int, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_attention_output, [:pointer, :pointer, :pointer, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_flash_attention, [:pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :float, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_mqa_attention, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_attention_forward, [:pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :int, :int, :int, :int, :int, :float, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_attention_backward, [:pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :int, :int, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_kv_cache_write, [:pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_open, [:string, :pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_close, [:pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_count, [:pointer, :pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_name, [:pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_info, [:pointer, :string, :pointer, :pointer, :pointer, :int], :int32, BLOCKING
    attach_function :cudann_safetensors_read, [:pointer, :string, :int, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_writer_create, [:pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_writer_add, [:pointer, :string, :int, :int, :pointer, :pointer, :pointer], :int32, BLOCKING
    attach_function :cudann_safetensors_writer_save, [:pointer, :string], :int32, BLOCKING
    attach_function :cudann_safetensors_writer_free, [:pointer], :int32, BLOCKING
    attach_function :cudann_comm_id, [:pointer], :int32, BLOCKING
    attach_function :cudann_comm_init, [:pointer, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_comm_destroy, [:pointer], :int32, BLOCKING
    attach_function :cudann_all_reduce, [:pointer, :pointer, :int64, :int, :pointer, :pointer], :int32, BLOCKING
    attach_function :cudann_broadcast, [:pointer, :pointer, :int64, :int, :pointer, :pointer], :int32, BLOCKING
    attach_function :cuda_argmax, [:pointer, :pointer, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_sample, [:pointer, :pointer, :pointer, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_topk_sample, [:pointer, :pointer, :pointer, :int, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_topp_sample, [:pointer, :pointer, :pointer, :int, :int, :float, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_silu, [:pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cuda_add, [:pointer, :pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cuda_mul, [:pointer, :pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cuda_scale, [:pointer, :pointer, :float, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_silu_backward, [:pointer, :pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_gelu, [:pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_gelu_backward, [:pointer, :pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_swiglu, [:pointer, :pointer, :pointer, :int64, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_swiglu_backward, [:pointer, :pointer, :pointer, :pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_bias_add, [:pointer, :pointer, :pointer, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_bias_backward, [:pointer, :pointer, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_embedding, [:pointer, :pointer, :pointer, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_embedding_backward, [:pointer, :pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_gemm, [:pointer, :pointer, :pointer, :int, :int, :int, :float, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_gemm_batched, [:pointer, :pointer, :pointer, :int, :int, :int, :int, :float, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_gemm_ex, [:int, :int, :int, :int, :int, :float, :pointer, :int, :int64, :int64, :pointer, :int, :int64, :int64, :float, :pointer, :int, :int64, :int64, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_gemm_grouped, [:int, :int, :int, :int, :int, :int, :float, :pointer, :int, :int64, :int64, :pointer, :int, :int64, :int64, :float, :pointer, :int, :int64, :int64, :pointer, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_cross_entropy_forward, [:pointer, :pointer, :pointer, :pointer, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_cross_entropy_backward, [:pointer, :pointer, :pointer, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_aux_loss_forward, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_malloc, [:pointer, :int64], :int32, BLOCKING
    attach_function :cudann_malloc_host, [:pointer, :int64], :int32, BLOCKING
    attach_function :cudann_free, [:pointer], :int32, BLOCKING
    attach_function :cudann_memcpy, [:pointer, :pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_memset, [:pointer, :int, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_stream_create, [:pointer], :int32, BLOCKING
    attach_function :cudann_stream_destroy, [:pointer], :int32, BLOCKING
    attach_function :cudann_stream_synchronize, [:pointer], :int32, BLOCKING
    attach_function :cudann_device_synchronize, [], :int32, BLOCKING
    attach_function :cudann_device_count, [:pointer], :int32, BLOCKING
    attach_function :cudann_set_device, [:int], :int32, BLOCKING
    attach_function :cudann_get_device, [:pointer], :int32, BLOCKING
    attach_function :cudann_mem_info, [:pointer, :pointer], :int32, BLOCKING
    attach_function :cudann_backend, [], :string
    attach_function :cudann_moe_router_backward, [:pointer, :pointer, :pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_aux_loss_backward, [:pointer, :pointer, :int, :int, :float, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_moe_dispatch, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_moe_dispatch_backward, [:pointer, :pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_moe_combine, [:pointer, :pointer, :pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_moe_combine_backward, [:pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_rmsnorm, [:pointer, :pointer, :pointer, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_rmsnorm_residual, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_rmsnorm_backward, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_layernorm, [:pointer, :pointer, :pointer, :pointer, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cudann_layernorm_backward, [:pointer, :pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_adamw_step, [:pointer, :pointer, :pointer, :pointer, :float, :float, :float, :float, :float, :int, :int64, :pointer], :int32, BLOCKING
    attach_function :cuda_zero_grad, [:pointer, :int64, :pointer], :int32, BLOCKING
    attach_function :cuda_grad_clip, [:pointer, :pointer, :pointer, :float, :int64, :pointer], :int32, BLOCKING
    attach_function :cuda_scatter_add, [:pointer, :pointer, :pointer, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_rope_freqs, [:pointer, :int, :int, :float, :float, :pointer], :int32, BLOCKING
    attach_function :cuda_rope_forward, [:pointer, :pointer, :pointer, :int, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_rope_qk, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_rope_backward, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_rope, [:pointer, :pointer, :pointer, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_rope_ntk, [:pointer, :pointer, :pointer, :int, :int, :int, :int, :float, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_last_error, [], :string
    attach_function :cudann_version, [], :string
    attach_function :cuda_softmax, [:pointer, :pointer, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_convert, [:pointer, :int, :pointer, :int, :int64, :pointer], :int32, BLOCKING
    attach_function :cudann_add_ex, [:pointer, :pointer, :pointer, :int64, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_mul_ex, [:pointer, :pointer, :pointer, :int64, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_scale_ex, [:pointer, :pointer, :float, :int64, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_softmax_ex, [:pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_rmsnorm_ex, [:pointer, :pointer, :pointer, :int, :int, :float, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_argmax_ex, [:pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_sample_ex, [:pointer, :pointer, :pointer, :int, :int, :float, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_topk_sample_ex, [:pointer, :pointer, :pointer, :int, :int, :int, :float, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_topp_sample_ex, [:pointer, :pointer, :pointer, :int, :int, :float, :float, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_rope_qk_ex, [:pointer, :pointer, :pointer, :pointer, :pointer, :int, :int, :int, :int, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cuda_softmax_topk, [:pointer, :pointer, :pointer, :int, :int, :int, :pointer], :int32, BLOCKING
    attach_function :cudann_softmax_backward, [:pointer, :pointer, :pointer, :int, :int, :pointer], :int32, BLOCKING
  end
end
