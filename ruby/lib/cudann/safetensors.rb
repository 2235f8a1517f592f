# frozen_string_literal: true

module Cudann
  # FFI element types of the checkpoint data types with a Ruby Array form
  # (F16 and BF16 are read and written as Strings of bytes).
  ARRAY_TYPES = { F32 => :float, I32 => :int32, I64 => :int64, F64 => :double, U8 => :uint8 }.freeze

  # A safetensors file open for reading (cudann_safetensors_open).
  class Safetensors
    # Opens and checks path; with a block, yields the file and closes it.
    def self.open(path)
      file = new(path)
      return file unless block_given?

      begin
        yield file
      ensure
        file.close
      end
    end

    def initialize(path)
      out = FFI::MemoryPointer.new(:pointer)
      Cudann.check(Native.cudann_safetensors_open(path.to_s, out))
      @handle = out.read_pointer
    end

    def closed?
      @handle.nil?
    end

    # Closes the file; again does nothing.
    def close
      return nil if closed?

      Cudann.check(Native.cudann_safetensors_close(@handle))
      @handle = nil
    end

    def count
      out = FFI::MemoryPointer.new(:int64)
      Cudann.check(Native.cudann_safetensors_count(handle, out))
      out.read_int64
    end

    # The tensors' names, in the order of their data in the file.
    def names
      Array.new(count) do |i|
        out = FFI::MemoryPointer.new(:pointer)
        Cudann.check(Native.cudann_safetensors_name(handle, i, out))
        out.read_pointer.read_string
      end
    end

    # [dtype, shape] of tensor name.
    def info(name)
      type = FFI::MemoryPointer.new(:int)
      ndim = FFI::MemoryPointer.new(:int)
      dims = FFI::MemoryPointer.new(:int64, 16)
      Cudann.check(Native.cudann_safetensors_info(handle, name, type, ndim, dims, 16))
      [type.read_int, dims.get_array_of_int64(0, ndim.read_int)]
    end

    # Tensor name's values: a flat Array (a String of bytes for F16 and BF16).
    def read(name)
      dtype, shape = info(name)
      count = shape.inject(1, :*)
      size = DTYPE_SIZES.fetch(dtype)
      buf = FFI::MemoryPointer.new(:uint8, [count * size, 1].max)
      Cudann.check(Native.cudann_safetensors_read(handle, name, dtype, buf, count, nil))
      type = ARRAY_TYPES[dtype]
      type ? buf.public_send(:"get_array_of_#{type}", 0, count) : buf.read_bytes(count * size)
    end

    private

    def handle
      Cudann.invalid("Cudann::Safetensors: the file is closed") if closed?
      @handle
    end
  end

  # A safetensors file being assembled (cudann_safetensors_writer_create).
  class SafetensorsWriter
    # A new writer; with a block, yields it and frees it afterwards.
    def self.create
      writer = new
      return writer unless block_given?

      begin
        yield writer
      ensure
        writer.free
      end
    end

    def initialize
      out = FFI::MemoryPointer.new(:pointer)
      Cudann.check(Native.cudann_safetensors_writer_create(out))
      @handle = out.read_pointer
    end

    # Adds tensor name: data is a flat Array (of dtype F32, I32, I64, F64 or
    # U8) or a String of bytes (any dtype), shape its dimensions.
    def add(name, data, shape:, dtype: F32)
      count = shape.inject(1, :*)
      size = DTYPE_SIZES.fetch(dtype) { Cudann.invalid("SafetensorsWriter#add: unknown dtype #{dtype}") }
      have = data.is_a?(String) ? data.bytesize / size : data.size
      Cudann.invalid("Cudann::SafetensorsWriter#add: #{name}: #{have} elements for the shape #{shape}") unless
        have == count && shape.all? { |d| d.is_a?(Integer) && d >= 0 }
      buf = FFI::MemoryPointer.new(:uint8, [count * size, 1].max)
      if data.is_a?(String)
        buf.put_bytes(0, data)
      else
        type = ARRAY_TYPES.fetch(dtype) { Cudann.invalid("Cudann::SafetensorsWriter#add: dtype #{dtype} takes a String") }
        buf.public_send(:"put_array_of_#{type}", 0, data)
      end
      dims = FFI::MemoryPointer.new(:int64, [shape.size, 1].max).tap { |p| p.put_array_of_int64(0, shape) }
      Cudann.check(Native.cudann_safetensors_writer_add(handle, name, dtype, shape.size, dims, buf, nil))
      self
    end

    # Writes every tensor added so far to path (atomically).
    def save(path)
      Cudann.check(Native.cudann_safetensors_writer_save(handle, path.to_s))
      self
    end

    def closed?
      @handle.nil?
    end

    # Releases the writer; again does nothing.
    def free
      return nil if closed?

      Cudann.check(Native.cudann_safetensors_writer_free(@handle))
      @handle = nil
    end
    alias close free

    private

    def handle
      Cudann.invalid("Cudann::SafetensorsWriter: the writer is freed") if closed?
      @handle
    end
  end
end
