# frozen_string_literal: true

module Cudann
  # Library memory: from Cudann.malloc (device memory on a GPU; 64-byte
  # aligned, zeroed host memory on the CPU backend) or Cudann.malloc_host
  # (page-locked host memory). Pass it to any op in place of an Array; move
  # data with #upload and #download; #free (or #close) releases it, once (a
  # second #free does nothing). Ruby never reads it directly.
  class Memory
    attr_reader :bytesize

    # Allocates bytesize bytes (cudann_malloc, or cudann_malloc_host with host: true).
    def initialize(bytesize, host: false)
      Cudann.invalid("Cudann::Memory.new: bytesize must be an Integer >= 0 (got #{bytesize.inspect})") unless
        bytesize.is_a?(Integer) && bytesize >= 0
      out = FFI::MemoryPointer.new(:pointer)
      Cudann.check(host ? Native.cudann_malloc_host(out, bytesize) : Native.cudann_malloc(out, bytesize))
      @ptr = out.read_pointer
      @bytesize = bytesize
      @state = { freed: false }
      @view = false
    end

    # A Memory holding `values` (an Array, uploaded as `type`).
    def self.from(values, type: :float)
      new(values.size * FFI.type_size(type)).tap { |m| m.upload(values, type: type) }
    end

    # The part [offset, offset + bytesize) of this memory, sharing it (valid
    # until this memory is freed; freeing a view is an error).
    def view(offset, bytesize)
      raise_if_freed("view")
      unless offset.is_a?(Integer) && bytesize.is_a?(Integer) && offset >= 0 && bytesize >= 0 &&
             offset + bytesize <= @bytesize
        Cudann.invalid("Cudann::Memory#view: [#{offset}, #{offset}+#{bytesize}) is outside the #{@bytesize}-byte memory")
      end
      v = dup
      v.instance_variable_set(:@ptr, @ptr + offset)
      v.instance_variable_set(:@bytesize, bytesize)
      v.instance_variable_set(:@view, true)
      v
    end

    def closed?
      @state[:freed]
    end
    alias freed? closed?

    # Frees the memory (cudann_free, which first waits for the device's work).
    def free
      Cudann.invalid("Cudann::Memory#free: a view does not own its memory") if @view
      return nil if closed?

      Cudann.check(Native.cudann_free(@ptr))
      @state[:freed] = true
      nil
    end
    alias close free

    # The address, for FFI calls (an FFI::Pointer).
    def to_ptr
      raise_if_freed("to_ptr")
      @ptr
    end

    # Copies values (an Array of `type`, a String of bytes, or an
    # FFI::MemoryPointer) to the start of the memory (cudann_memcpy).
    def upload(values, type: :float, stream: nil)
      src = case values
            when String then FFI::MemoryPointer.new(:uint8, [values.bytesize, 1].max).tap { |p| p.put_bytes(0, values) }
            when FFI::MemoryPointer then values
            else host_array(values, type)
            end
      bytes = values.is_a?(Array) ? values.size * FFI.type_size(type) : src.size
      bytes = values.bytesize if values.is_a?(String)
      copy_check("upload", bytes)
      Cudann.check(Native.cudann_memcpy(@ptr, src, bytes, Cudann.stream_pointer("Cudann::Memory#upload", stream)))
      self
    end

    # The first `count` elements of `type` (default: all of them) as an Array.
    def download(count = nil, type: :float, stream: nil)
      count ||= @bytesize / FFI.type_size(type)
      bytes = count * FFI.type_size(type)
      copy_check("download", bytes)
      host = FFI::MemoryPointer.new(type, [count, 1].max)
      Cudann.check(Native.cudann_memcpy(host, @ptr, bytes, Cudann.stream_pointer("Cudann::Memory#download", stream)))
      host.public_send(:"get_array_of_#{type}", 0, count)
    end

    # Copies all of other (library memory) to the start of this memory.
    def copy_from(other, stream: nil)
      copy_check("copy_from", other.bytesize)
      Cudann.check(Native.cudann_memcpy(@ptr, other.to_ptr, other.bytesize,
                                        Cudann.stream_pointer("Cudann::Memory#copy_from", stream)))
      self
    end

    # Sets every byte to value (cudann_memset; 0xff bytes make float NaNs).
    def memset(value, stream: nil)
      raise_if_freed("memset")
      Cudann.check(Native.cudann_memset(@ptr, value, @bytesize, Cudann.stream_pointer("Cudann::Memory#memset", stream)))
      self
    end

    def inspect
      "#<Cudann::Memory #{@bytesize} bytes#{closed? ? ' (freed)' : ''}#{@view ? ' (view)' : ''}>"
    end

    private

    def host_array(values, type)
      FFI::MemoryPointer.new(type, [values.size, 1].max).tap do |p|
        p.public_send(:"put_array_of_#{type}", 0, values)
      end
    end

    def raise_if_freed(what)
      Cudann.invalid("Cudann::Memory##{what}: the memory is freed") if closed?
    end

    def copy_check(what, bytes)
      raise_if_freed(what)
      Cudann.invalid("Cudann::Memory##{what}: #{bytes} bytes do not fit the #{@bytesize}-byte memory") if
        bytes > @bytesize
    end
  end

  # A stream (cudann_stream_create): a CUDA stream on a GPU, a handle that does
  # nothing on the CPU backend. Pass it as `stream:`; nil is the default stream.
  class Stream
    def initialize
      out = FFI::MemoryPointer.new(:pointer)
      Cudann.check(Native.cudann_stream_create(out))
      @ptr = out.read_pointer
    end

    def closed?
      @ptr.nil?
    end

    # The cudaStream_t, for other CUDA libraries.
    def to_ptr
      Cudann.invalid("Cudann::Stream: the stream is destroyed") if closed?
      @ptr
    end

    # Waits for all work enqueued on the stream.
    def synchronize
      Cudann.check(Native.cudann_stream_synchronize(to_ptr))
      self
    end

    # Destroys the stream (work already enqueued completes); again does nothing.
    def close
      return nil if closed?

      Cudann.check(Native.cudann_stream_destroy(@ptr))
      @ptr = nil
    end
    alias destroy close
  end

  # Library memory of bytesize bytes; with a block, yields it and frees it
  # afterwards (returning the block's value).
  def self.malloc(bytesize, &block)
    with(Memory.new(bytesize), :free, &block)
  end

  # Page-locked host memory (the host side of asynchronous copies); block form as malloc.
  def self.malloc_host(bytesize, &block)
    with(Memory.new(bytesize, host: true), :free, &block)
  end

  # A new stream; with a block, yields it and destroys it afterwards.
  def self.stream(&block)
    with(Stream.new, :close, &block)
  end

  def self.with(resource, release)
    return resource unless block_given?

    begin
      yield resource
    ensure
      resource.public_send(release)
    end
  end
  private_class_method :with

  # The pointer of a `stream:` argument.
  def self.stream_pointer(fn, stream)
    case stream
    when nil then nil
    when Stream
      invalid("#{fn}: the stream is destroyed") if stream.closed?
      stream.to_ptr
    when FFI::Pointer then stream # a stream made elsewhere (cudaStream_t)
    else raise TypeError, "#{fn}: stream must be a Cudann::Stream or an FFI::Pointer (got #{stream.class})"
    end
  end

  # Waits for all work on the calling thread's current device.
  def self.device_synchronize
    check(Native.cudann_device_synchronize)
  end

  # The number of GPUs calls can use (0 on the CPU backend).
  def self.device_count
    out = FFI::MemoryPointer.new(:int)
    check(Native.cudann_device_count(out))
    out.read_int
  end

  # The calling thread's current device (each Ruby thread has its own).
  def self.device
    out = FFI::MemoryPointer.new(:int)
    check(Native.cudann_get_device(out))
    out.read_int
  end

  def self.device=(device)
    check(Native.cudann_set_device(device))
  end

  def self.set_device(device) # rubocop:disable Naming/AccessorMethodName
    self.device = device
  end

  # [free, total] bytes of the current device (the machine's, on the CPU backend).
  def self.mem_info
    free = FFI::MemoryPointer.new(:int64)
    total = FFI::MemoryPointer.new(:int64)
    check(Native.cudann_mem_info(free, total))
    [free.read_int64, total.read_int64]
  end

  # Which backend serves calls on this thread, and why.
  def self.backend
    Native.cudann_backend
  end

  # The library's version (cudann_version).
  def self.library_version
    Native.cudann_version
  end
end
