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
  attach_function :cudann_last_error, [], :string
  attach_function :cudann_version, [], :string

  # Host buffers. Values go through float32, so references must read them back.
  def self.floats(values)
    FFI::MemoryPointer.new(:float, [values.size, 1].max).tap { |p| p.put_array_of_float(0, values) }
  end

  def self.int32s(values)
    FFI::MemoryPointer.new(:int32, [values.size, 1].max).tap { |p| p.put_array_of_int32(0, values) }
  end

  def self.uint64s(values)
    FFI::MemoryPointer.new(:uint64, [values.size, 1].max).tap { |p| p.put_array_of_uint64(0, values) }
  end
end
