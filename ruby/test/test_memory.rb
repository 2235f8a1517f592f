# frozen_string_literal: true

require_relative "test_helper"

# Library memory, streams and devices through Cudann::Memory and Cudann::Stream.
class CudannMemoryTest < CudannTestCase
  # Library memory as a GPU program uses it: upload, three ops on a library
  # stream (rmsnorm, softmax of its output, silu in place on the input rmsnorm
  # read first), synchronize, download, check against float64, free.
  def test_device_memory_pipeline
    rows, dim = 13, 257
    n = rows * dim
    x = R.rand_f32(40, n, 3.0)
    w = R.rand_f32(41, dim, 1.0)
    dx, dy, ds = Array.new(3) { Cudann.malloc(4 * n) }
    dw = Cudann.malloc(4 * dim)
    Cudann.stream do |stream|
      dx.upload(x, stream: stream)
      dw.upload(w, stream: stream)
      [dy, ds].each { |d| d.memset(0xff, stream: stream) } # NaN: a missed element shows
      assert_same dy, Cudann.rmsnorm(dx, dw, rows, dim, 1e-5, out: dy, stream: stream)
      Cudann.softmax(dy, rows, dim, out: ds, stream: stream)
      Cudann.silu(dx, out: dx, stream: stream)
      stream.synchronize
    end
    y = dy.download
    assert_near y, R.rmsnorm(x, w, dim, R.f32(1e-5)), 1e-5, nil, "rmsnorm on library memory"
    assert_near ds.download, R.softmax(y, rows, dim), 1e-5, nil, "softmax of the rmsnorm output"
    assert_near dx.download, x.map { |v| v / (1 + Math.exp(-v)) }, 5e-7, nil, "silu in place after rmsnorm"
    [dx, dw, dy, ds].each(&:free)
    assert dx.freed?
    assert_nil dx.free, "a second free does nothing"
    assert_invalid("input is freed memory") { Cudann.silu(dx) }
  end

  # New outputs of library-memory inputs are library memory; block forms free.
  def test_outputs_and_block_forms
    x = [-1.0, 0.0, 1.0, 2.0]
    kept = nil
    got = Cudann.malloc(16) do |m|
      kept = m
      m.upload(x)
      y = Cudann.silu(m)
      assert_kind_of Cudann::Memory, y
      begin
        y.download
      ensure
        y.free
      end
    end
    assert_near got, x.map { |v| v / (1 + Math.exp(-v)) }, 5e-7
    assert kept.freed?, "the block form frees"
    m = Cudann::Memory.from([1, 2, 3], type: :int32)
    assert_equal [1, 2, 3], m.download(type: :int32)
    copy = Cudann.malloc(12)
    copy.copy_from(m)
    assert_equal [1, 2, 3], copy.download(type: :int32)
    [m, copy].each(&:close)
  end

  # Misuse raises and writes nothing: refused here where the gem can tell,
  # else by the library.
  def test_device_memory_misuse
    ramp = (0...16).map(&:to_f)
    buf = Cudann::Memory.from(ramp)
    assert_invalid("128 bytes do not fit the 64-byte memory") { buf.download(32) }
    view = buf.view(32, 32)
    assert_invalid("36 bytes do not fit the 32-byte memory") { view.upload([7.0] * 9) }
    assert_invalid("a view does not own its memory") { view.free }
    assert_invalid("outside the 64-byte memory") { buf.view(60, 8) }
    assert_invalid("out has 8 elements, want 16") { Cudann.silu(buf, out: view) }
    Cudann.scale(view, 2.0, out: view) # the second half, in place
    assert_equal ramp.each_with_index.map { |v, i| i >= 8 ? 2 * v : v }, buf.download
    buf.upload(ramp)
    assert_invalid("bytesize must be an Integer >= 0") { Cudann.malloc(-1) }

    stream = Cudann::Stream.new
    stream.close
    assert_nil stream.close, "destroying again does nothing"
    assert_invalid("destroyed") { stream.synchronize }
    assert_invalid("the stream is destroyed") { buf.download(stream: stream) }
    assert_invalid("the stream is destroyed") { Cudann.silu(buf, out: buf, stream: stream) }
    assert_equal ramp, buf.download, "an op on a destroyed stream writes nothing"
    # The library's own check: a stream it did not create.
    assert_invalid("cudann_stream_destroy") { Cudann::Native.cudann_stream_destroy(buf.to_ptr).then { |rc| Cudann.check(rc) } }
    buf.free
  end

  def test_devices_and_backend
    backend = Cudann.backend
    assert_match(/\A(cpu|cuda): /, backend)
    count = Cudann.device_count
    assert_equal backend.start_with?("cpu: "), count.zero?, "#{count} devices on #{backend}"
    # The current device is per OS thread; a Ruby thread keeps its own.
    Cudann.device = 0
    assert_equal 0, Cudann.device
    assert_invalid("device") { Cudann.set_device([count, 1].max) }
    free, total = Cudann.mem_info
    assert_operator 0, :<, free
    assert_operator free, :<=, total
    Cudann.device_synchronize
    Cudann.malloc_host(16) do |pinned|
      pinned.upload([1, 2, 3, 4])
      assert_equal [1.0, 2.0, 3.0, 4.0], pinned.download, "page-locked round trip"
    end
  end
end
