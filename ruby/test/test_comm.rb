# frozen_string_literal: true

require_relative "test_helper"

# Communicators through Cudann::Communicator: one rank's collectives are exact
# copies on any backend (Arrays, FFI::MemoryPointers and library memory, in
# place too), bad arguments raise with the library's message, and two ranks
# need NCCL and a GPU (refused without them).
class CudannCommTest < CudannTestCase
  SOLO_PREFIX = "cudann solo id\0\0".b

  # Random float32 values and the ones a conversion or arithmetic would
  # change: NaN, signed zeros, infinities, subnormals, the extremes.
  def comm_data(seed, n)
    x = R.rand_f32(seed, n, 1e3)
    specials = R.f32s([Float::NAN, -0.0, 0.0, Float::INFINITY, -Float::INFINITY, 1.4e-45, -1.1754942e-38,
                       3.4028234663852886e38, -3.4028234663852886e38])
    x[3, specials.size] = specials
    x
  end

  # The same data as float32 bit patterns, with NaN payloads and a signalling
  # NaN (which a trip through a Ruby Float would change).
  def comm_bits(seed, n)
    bits = comm_data(seed, n).pack("e*").unpack("V*")
    bits[1] = 0x7fc12345
    bits[2] = 0xffa00001
    bits
  end

  def assert_same_floats(want, got, what)
    assert_equal want.size, got.size, "#{what}: length"
    assert_equal want.pack("e*"), got.pack("e*"), "#{what}: not an exact copy"
  end

  def test_comm_id
    a = Cudann.comm_id
    b = Cudann.comm_id
    assert_equal 128, Cudann::COMM_ID_BYTES
    assert_equal [128, 128], [a.bytesize, b.bytesize]
    assert_equal Encoding::BINARY, a.encoding
    refute_equal a, b, "two ids are equal"
    assert_equal [0, 1], [Cudann::SUM, Cudann::AVG]
  end

  # One rank on Arrays: sum and mean are exact copies of random data, as is a
  # broadcast; into a given recv:, in place, and on a stream.
  def test_one_rank_arrays
    x = comm_data(60, 1001)
    keep = x.dup
    comm = Cudann::Communicator.new(1, 0, Cudann.comm_id)
    assert_equal [1, 0], [comm.nranks, comm.rank]
    %i[sum avg].each do |op|
      y = comm.all_reduce(x, op: op)
      assert_kind_of Array, y
      assert_same_floats x, y, "all_reduce #{op}"
      recv = [Float::NAN] * x.size
      assert_same recv, comm.all_reduce(x, recv: recv, op: op)
      assert_same_floats x, recv, "all_reduce #{op} into recv:"
      z = x.dup
      assert_same z, comm.all_reduce(z, recv: z, op: op)
      assert_same_floats x, z, "all_reduce #{op} in place"
    end
    assert_same_floats x, comm.all_reduce(x), "all_reduce (op: :avg by default)"
    assert_same_floats x, comm.all_reduce(x, op: Cudann::SUM), "all_reduce with Cudann::SUM"
    assert_same_floats x, comm.broadcast(x), "broadcast"
    Cudann.stream do |stream|
      recv = [0.0] * x.size
      comm.broadcast(x, recv: recv, root: 0, stream: stream)
      stream.synchronize
      assert_same_floats x, recv, "broadcast on a stream"
      z = x.dup
      comm.broadcast(z, recv: z, stream: stream)
      assert_same_floats x, z, "broadcast in place"
    end
    assert_same_floats keep, x, "send after the collectives"
    assert_equal [], comm.all_reduce([], op: :sum)
    assert_equal "#<Cudann::Communicator rank 0 of 1>", comm.inspect
    assert_nil comm.destroy
    assert comm.destroyed?
    assert_nil comm.close, "destroying again does nothing"
    assert_equal "#<Cudann::Communicator rank 0 of 1 (destroyed)>", comm.inspect

    # The default id is a fresh one; the block form destroys.
    kept = nil
    y = Cudann.communicator do |c|
      kept = c
      c.all_reduce(x.first(7), op: :sum)
    end
    assert_same_floats x.first(7), y, "all_reduce in the block form"
    assert kept.closed?, "the block form destroys"
  end

  # One rank on library memory and FFI::MemoryPointers: exact copies of the
  # bits (NaN payloads and a signalling NaN included), in place too.
  def test_one_rank_library_memory
    bits = comm_bits(61, 4099)
    Cudann.communicator(1, 0) do |comm|
      send = Cudann::Memory.from(bits, type: :uint32)
      recv = Cudann.malloc(4 * bits.size)
      %i[sum avg].each do |op|
        recv.memset(0xff)
        assert_same recv, comm.all_reduce(send, recv: recv, op: op)
        assert_equal bits, recv.download(type: :uint32), "all_reduce #{op} on library memory"
        made = comm.all_reduce(send, op: op)
        assert_kind_of Cudann::Memory, made
        assert_equal bits, made.download(type: :uint32), "all_reduce #{op} into new library memory"
        made.free
      end
      comm.all_reduce(send, recv: send, op: :avg)
      assert_equal bits, send.download(type: :uint32), "all_reduce in place on library memory"
      recv.memset(0)
      Cudann.stream do |stream|
        comm.broadcast(send, recv: recv, stream: stream)
        comm.broadcast(recv, recv: recv, stream: stream)
        stream.synchronize
      end
      assert_equal bits, recv.download(type: :uint32), "broadcast on library memory, then in place"
      # Views: the second half of send into the first half of recv.
      half = 4 * 2048
      recv.memset(0)
      comm.all_reduce(send.view(half, half), recv: recv.view(0, half), op: :sum)
      got = recv.download(type: :uint32)
      assert_equal bits[2048, 2048], got.first(2048), "all_reduce of views"
      assert_equal [0] * (bits.size - 2048), got.drop(2048), "past the view"
      # Host Arrays into library memory and back (one rank copies any memory).
      recv.memset(0xff)
      floats = comm_data(62, bits.size)
      comm.all_reduce(floats, recv: recv, op: :sum)
      assert_same_floats floats, comm.broadcast(recv, recv: [0.0] * bits.size), "Array -> memory -> Array"
      [send, recv].each(&:free)

      ptr = FFI::MemoryPointer.new(:uint32, bits.size).tap { |p| p.put_array_of_uint32(0, bits) }
      out = comm.broadcast(ptr)
      assert_kind_of FFI::MemoryPointer, out
      assert_equal bits, out.get_array_of_uint32(0, bits.size), "broadcast of an FFI::MemoryPointer"
      assert_same ptr, comm.all_reduce(ptr, recv: ptr, op: :sum)
      assert_equal bits, ptr.get_array_of_uint32(0, bits.size), "all_reduce in place on a pointer"
    end
  end

  # Misuse raises and writes nothing: refused here where the gem can tell (id
  # length, lengths, op names, destroyed communicators and streams), else by
  # the library, with its message.
  def test_bad_arguments
    id = Cudann.comm_id
    assert_invalid("Cudann::Communicator.new: id has 5 bytes, want 128 (from Cudann.comm_id)") do
      Cudann::Communicator.new(1, 0, "short")
    end
    assert_invalid("id has 129 bytes, want 128") { Cudann::Communicator.new(1, 0, id + "x") }
    assert_invalid("id has 0 bytes") { Cudann::Communicator.new(1, 0, "") }
    assert_raises(TypeError) { Cudann::Communicator.new(1, 0, id.bytes) }
    assert_invalid("cudann_comm_init: rank must be in [0, nranks = 2) (got 2)") { Cudann::Communicator.new(2, 2, id) }
    assert_invalid("rank must be in [0, nranks = 1) (got -1)") { Cudann::Communicator.new(1, -1, id) }
    assert_invalid("cudann_comm_init: nranks must be >= 1 (got 0)") { Cudann::Communicator.new(0, 0, id) }

    comm = Cudann::Communicator.new(1, 0, id)
    x = comm_data(63, 64)
    y = [9.0] * 64
    assert_invalid("Cudann::Communicator#all_reduce: op must be :sum or :avg (got :max)") do
      comm.all_reduce(x, recv: y, op: :max)
    end
    assert_invalid("cudann_all_reduce: op must be CUDANN_SUM (0) or CUDANN_AVG (1) (got 2)") do
      comm.all_reduce(x, recv: y, op: 2)
    end
    assert_raises(TypeError) { comm.all_reduce(x, recv: y, op: "sum") }
    assert_invalid("cudann_broadcast: root must be in [0, nranks = 1) (got 1)") { comm.broadcast(x, recv: y, root: 1) }
    assert_invalid("root must be in [0, nranks = 1) (got -1)") { comm.broadcast(x, recv: y, root: -1) }
    assert_invalid("cudann_broadcast: send is NULL but holds 64 elements") { comm.broadcast(nil, recv: y) }
    assert_invalid("Cudann::Communicator#all_reduce: recv has 64 elements, want 63") do
      comm.all_reduce(x.first(63), recv: y)
    end
    assert_invalid("Cudann::Communicator#broadcast: recv has 64 elements, want 65") do
      comm.broadcast(x + [1.0], recv: y)
    end
    assert_raises(ArgumentError) { comm.all_reduce(nil, recv: y) }
    assert_raises(ArgumentError) { comm.broadcast(nil) }
    assert_raises(TypeError) { comm.all_reduce("floats") }
    stream = Cudann::Stream.new
    stream.close
    assert_invalid("Cudann::Communicator#all_reduce: the stream is destroyed") do
      comm.all_reduce(x, recv: y, stream: stream)
    end
    assert_equal [9.0] * 64, y, "refused calls write nothing"
    Cudann.malloc(64) do |m|
      assert_invalid("cudann_all_reduce: recv partially overlaps send") do
        comm.all_reduce(m.view(4, 60), recv: m.view(0, 60))
      end
      # The library's own check of the handle: one it did not hand out.
      assert_invalid("is not a live communicator from cudann_comm_init") do
        Cudann.check(Cudann::Native.cudann_all_reduce(m.to_ptr, m.to_ptr, 16, Cudann::SUM, m.to_ptr, nil))
      end
      assert_invalid("cudann_comm_destroy: comm") { Cudann.check(Cudann::Native.cudann_comm_destroy(m.to_ptr)) }
    end

    # A destroyed communicator raises, never crashes or writes.
    handle = comm.to_ptr
    comm.destroy
    assert_invalid("Cudann::Communicator#all_reduce: the communicator is destroyed") { comm.all_reduce(x, recv: y) }
    assert_invalid("Cudann::Communicator#broadcast: the communicator is destroyed") { comm.broadcast(x, recv: y) }
    assert_invalid("the communicator is destroyed") { comm.to_ptr }
    assert_invalid("cudann_comm_destroy: comm") { Cudann.check(Cudann::Native.cudann_comm_destroy(handle)) }
    assert_equal [9.0] * 64, y, "a destroyed communicator writes nothing"
  end

  # More than one rank needs NCCL and a GPU. Without them, the id made here
  # serves one rank only and another id is refused as not available, each
  # with the library's message. Where NCCL and a GPU are usable a second rank
  # would have to join: skipped.
  def test_two_ranks_need_nccl
    id = Cudann.comm_id
    skip "this machine has NCCL and a GPU: a second rank would be needed" unless id.start_with?(SOLO_PREFIX)

    err = assert_invalid("cudann_comm_init: this id was made without NCCL") { Cudann::Communicator.new(2, 0, id) }
    assert_includes err.message, "one rank only"
    other = "\x01".b + ("\0".b * (Cudann::COMM_ID_BYTES - 1)) # an id from elsewhere (an NCCL machine's, say)
    err = assert_raises(Cudann::Error) { Cudann::Communicator.new(2, 1, other) }
    assert_equal Cudann::NOT_AVAILABLE, err.code
    assert_match(/\Acudann_comm_init: .*(NCCL|GPU)/, err.message)
  end
end
