# frozen_string_literal: true

# cudann: the Ruby binding of libcudann (the C-ABI neural-network operator
# library), on the ffi gem.
#
#   require "cudann"
#   Cudann.silu([-1.0, 0.0, 1.0])          # => a new Array
#   Cudann.softmax(x, 2, 3, out: y)        # writes into y
#
# Every op of cudann.h is a module function named after it without the
# cuda_/cudann_ prefix. Arguments follow the C order: the input tensors
# (and those written in place), then the scalar parameters (positional, or
# keywords by their C names); outputs are returned, or written into the
# keyword arguments of their C names (`out:` for `output`); `stream:` takes
# a Cudann::Stream. Tensors are Arrays, FFI::MemoryPointers, Cudann::Memory
# (library memory) or Numo::NArrays (when numo-narray is loaded); new
# outputs are of the first input's kind. Lengths are checked against the
# shape before any call; failures raise Cudann::Error (#code, #message).
require "ffi"

begin
  require "numo/narray"
rescue LoadError
  nil # optional: Numo::NArray arguments work when it is installed
end

require_relative "cudann/version"
require_relative "cudann/native"
require_relative "cudann/error"
require_relative "cudann/tensor"
require_relative "cudann/memory"
require_relative "cudann/ops"
require_relative "cudann/safetensors"
require_relative "cudann/comm"
