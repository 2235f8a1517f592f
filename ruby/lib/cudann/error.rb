# frozen_string_literal: true

module Cudann
  SUCCESS = 0
  NOT_AVAILABLE = -1
  INVALID_VALUE = -2
  LAUNCH_FAILED = -3
  OUT_OF_MEMORY = -4
  INTERNAL = -5

  # Data types of tensors passed as void* (checkpoints store all seven; the
  # compute ops take F32).
  F32 = 0
  F16 = 1
  BF16 = 2
  I32 = 3
  I64 = 4
  F64 = 5
  U8 = 6

  # A failed call: #code is the library's return code (INVALID_VALUE, ...),
  # the message is cudann_last_error() ("cuda_topk_sample: k must be >= 1
  # (got 0)"), or, for an argument refused before the call (a wrong length,
  # a freed buffer), a message naming the Ruby method ("Cudann.softmax: out
  # has 5 elements, want 6 (rows*cols)") with code INVALID_VALUE. Nothing was
  # written either way.
  class Error < StandardError
    attr_reader :code

    def initialize(code, message)
      @code = code
      super(message)
    end
  end

  # Raises Cudann::Error unless rc is SUCCESS; the message is read on this
  # thread, right after the call.
  def self.check(rc)
    raise Error.new(rc, Native.cudann_last_error) unless rc == SUCCESS

    nil
  end

  # Raises an INVALID_VALUE Cudann::Error for an argument refused here.
  def self.invalid(message)
    raise Error.new(INVALID_VALUE, message)
  end
end
