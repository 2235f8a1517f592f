# frozen_string_literal: true

# libcudann through Ruby FFI, the way Ruby callers bind it: attach_function with
# the ABI.md signatures. `blocking: true` releases the GVL during a call, so
# Ruby threads really run the library concurrently.
require "ffi"

module Cudann
  extend FFI::Library

  REPO = File.expand_path("../..", __dir__)
  ffi_lib ENV.fetch("CUDANN_LIB", File.join(REPO, "target/release/libcudann.so"))

  SUCCESS = 0
  INVALID_VALUE = -2
  # data types of `void*` tensors
  F32 = 0
  BF16 = 2
  I32 = 3

  opts = { blocking: true }
  attach_function :cuda_silu, %i[pointer pointer int64 pointer], :int32, opts
  attach_function :cuda_softmax, %i[pointer pointer int int pointer], :int32, opts
  attach_function :cuda_rmsnorm, %i[pointer pointer pointer int int float pointer], :int32, opts
  attach_function :cuda_gemm, %i[pointer pointer pointer int int int float float pointer], :int32, opts
  attach_function :cuda_cross_entropy_forward, %i[pointer pointer pointer pointer int int pointer], :int32, opts
  attach_function :cuda_cross_entropy_backward, %i[pointer pointer pointer int int float pointer], :int32, opts
  attach_function :cuda_adamw_step,
                  %i[pointer pointer pointer pointer float float float float float int int64 pointer], :int32, opts
  attach_function :cuda_argmax, %i[pointer pointer int int pointer], :int32, opts
  attach_function :cuda_topk_sample, %i[pointer pointer pointer int int int float pointer], :int32, opts
  attach_function :cuda_topp_sample, %i[pointer pointer pointer int int float float pointer], :int32, opts
  attach_function :cudann_gemm_ex,
                  %i[int int int int int float pointer int int64 int64 pointer int int64 int64
                     float pointer int int64 int64 int pointer], :int32, opts
  attach_function :cudann_swiglu, %i[pointer pointer pointer int64 int pointer], :int32, opts
  attach_function :cudann_swiglu_backward, %i[pointer pointer pointer pointer pointer int64 pointer], :int32, opts
  attach_function :cudann_rmsnorm_backward, %i[pointer pointer pointer pointer pointer int int float pointer], :int32, opts
  attach_function :cudann_attention_forward,
                  %i[pointer pointer pointer pointer pointer pointer int int int int int int int int int float int pointer],
                  :int32, opts
  attach_function :cudann_attention_backward,
                  %i[pointer pointer pointer pointer pointer pointer pointer pointer pointer pointer
                     int int int int int int int int float pointer], :int32, opts
  attach_function :cudann_embedding, %i[pointer pointer pointer int int int int pointer], :int32, opts
  attach_function :cudann_embedding_backward, %i[pointer pointer pointer int int int pointer], :int32, opts
  attach_function :cudann_moe_dispatch, %i[pointer pointer pointer pointer pointer int int int int pointer], :int32, opts
  attach_function :cudann_moe_combine, %i[pointer pointer pointer pointer int int int pointer], :int32, opts
  # Safetensors handles are opaque pointers; out-parameters are pointers to them.
  attach_function :cudann_safetensors_open, %i[string pointer], :int32, opts
  attach_function :cudann_safetensors_close, %i[pointer], :int32, opts
  attach_function :cudann_safetensors_count, %i[pointer pointer], :int32, opts
  attach_function :cudann_safetensors_name, %i[pointer int64 pointer], :int32, opts
  attach_function :cudann_safetensors_info, %i[pointer string pointer pointer pointer int], :int32, opts
  attach_function :cudann_safetensors_read, %i[pointer string int pointer int64 pointer], :int32, opts
  attach_function :cudann_safetensors_writer_create, %i[pointer], :int32, opts
  attach_function :cudann_safetensors_writer_add, %i[pointer string int int pointer pointer pointer], :int32, opts
  attach_function :cudann_safetensors_writer_save, %i[pointer string], :int32, opts
  attach_function :cudann_safetensors_writer_free, %i[pointer], :int32, opts
  # Library memory, streams and devices. Pointers and streams are opaque
  # FFI::Pointers; out-parameters are pointers to them.
  attach_function :cudann_malloc, %i[pointer int64], :int32, opts
  attach_function :cudann_malloc_host, %i[pointer int64], :int32, opts
  attach_function :cudann_free, %i[pointer], :int32, opts
  attach_function :cudann_memcpy, %i[pointer pointer int64 pointer], :int32, opts
  attach_function :cudann_memset, %i[pointer int int64 pointer], :int32, opts
  attach_function :cudann_stream_create, %i[pointer], :int32, opts
  attach_function :cudann_stream_destroy, %i[pointer], :int32, opts
  attach_function :cudann_stream_synchronize, %i[pointer], :int32, opts
  attach_function :cudann_device_synchronize, [], :int32, opts
  attach_function :cudann_device_count, %i[pointer], :int32, opts
  attach_function :cudann_set_device, %i[int], :int32, opts
  attach_function :cudann_get_device, %i[pointer], :int32, opts
  attach_function :cudann_mem_info, %i[pointer pointer], :int32, opts
  attach_function :cudann_backend, [], :string
  attach_function :cudann_last_error, [], :string
  attach_function :cudann_version, [], :string

  # Host buffers. Values go through float32, so references must read them back.
  def self.floats(values)
    FFI::MemoryPointer.new(:float, [values.size, 1].max).tap { |p| p.put_array_of_float(0, values) }
  end

  def self.int32s(values)
    FFI::MemoryPointer.new(:int32, [values.size, 1].max).tap { |p| p.put_array_of_int32(0, values) }
  end

  def self.int64s(values)
    FFI::MemoryPointer.new(:int64, [values.size, 1].max).tap { |p| p.put_array_of_int64(0, values) }
  end

  def self.uint64s(values)
    FFI::MemoryPointer.new(:uint64, [values.size, 1].max).tap { |p| p.put_array_of_uint64(0, values) }
  end
end
