# frozen_string_literal: true

require "minitest/autorun"
require "cudann"
require_relative "reference"

# Shared assertions: values against the float64 references, errors by code and message.
class CudannTestCase < Minitest::Test
  R = Reference

  def assert_near(got, want, rtol, scale = nil, what = "")
    err = R.mismatch(got, want, rtol, scale)
    assert_nil err, "#{what}: #{err}"
  end

  def assert_invalid(message, &block)
    err = assert_raises(Cudann::Error, &block)
    assert_equal Cudann::INVALID_VALUE, err.code
    assert_includes err.message, message
    err
  end
end
