# frozen_string_literal: true

module Cudann
  # Conversion of tensor arguments: Arrays (copied through host buffers),
  # FFI::MemoryPointers (used in place; their size bounds them), Cudann::Memory
  # (library memory, used in place) and Numo::NArrays (copied), when Numo is
  # loaded.
  module Tensor
    # element type => [FFI type, bytes, Numo class name]
    TYPES = {
      f32: [:float, 4, "SFloat"],
      u16: [:uint16, 2, "UInt16"], # the bits of float16 / bfloat16 values
      i32: [:int32, 4, "Int32"],
      u64: [:uint64, 8, "UInt64"]
    }.freeze

    module_function

    def numo?(value)
      defined?(Numo::NArray) && value.is_a?(Numo::NArray)
    end

    def numo_class(type)
      Numo.const_get(TYPES.fetch(type)[2])
    end

    # The number of elements of `type` that `value` holds.
    def count(fn, name, value, type)
      size = TYPES.fetch(type)[1]
      case value
      when nil then 0
      when Array
        if type == :u16 && !value.all? { |v| v.is_a?(Integer) && v >= 0 && v <= 0xFFFF }
          raise TypeError, "#{fn}: #{name} must hold the bits of F16/BF16 values (Integers in 0..65535)"
        end

        value.size
      when Memory
        Cudann.invalid("#{fn}: #{name} is freed memory") if value.closed?
        whole(fn, name, value.bytesize, size)
      when FFI::MemoryPointer then whole(fn, name, value.size, size)
      else
        return value.size if numo?(value)

        raise TypeError, "#{fn}: #{name} must be an Array, an FFI::MemoryPointer, Cudann::Memory " \
                         "or a Numo::NArray (got #{value.class})"
      end
    end

    def whole(fn, name, bytes, size)
      Cudann.invalid("#{fn}: #{name} holds #{bytes} bytes, not a whole number of #{size}-byte elements") unless
        (bytes % size).zero?
      bytes / size
    end

    # A new zeroed tensor of `count` elements, of the kind of `like`.
    def new_like(like, type, count)
      ffi_type, size = TYPES.fetch(type)
      case like
      when Memory then Memory.new(size * count).tap { |m| m.memset(0) }
      when FFI::MemoryPointer then FFI::MemoryPointer.new(ffi_type, count)
      else
        return numo_class(type).zeros(count) if numo?(like)

        Array.new(count, type == :f32 ? 0.0 : 0)
      end
    end

    # [pointer for the call, lambda writing results back into value (or nil)].
    def pointer(value, type, count)
      ffi_type, size = TYPES.fetch(type)
      case value
      when nil then [nil, nil]
      when Memory, FFI::MemoryPointer then [value.to_ptr, nil]
      when Array
        ptr = FFI::MemoryPointer.new(ffi_type, [count, 1].max)
        ptr.public_send(:"put_array_of_#{ffi_type}", 0, value)
        [ptr, -> { value.replace(ptr.public_send(:"get_array_of_#{ffi_type}", 0, count)) }]
      else # Numo
        bytes = numo_class(type).cast(value).to_binary
        ptr = FFI::MemoryPointer.new(:uint8, [bytes.bytesize, 1].max)
        ptr.put_bytes(0, bytes)
        [ptr, -> { value.store(numo_class(type).from_binary(ptr.read_bytes(count * size), value.shape)) }]
      end
    end
  end
end
