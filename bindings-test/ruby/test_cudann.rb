# frozen_string_literal: true

require "minitest/autorun"
require_relative "cudann_ffi"
require_relative "reference"

class CudannTest < Minitest::Test
  R = Reference

  def assert_near(got, want, rtol, scale = nil, what = "")
    err = R.mismatch(got, want, rtol, scale)
    assert_nil err, "#{what}: #{err}"
  end

  def test_version
    assert_match(/\A\d+\.\d+\.\d+\z/, Cudann.cudann_version)
  end

  def test_gemm
    [[1, 1, 1], [33, 31, 17], [5, 4097, 2]].each do |m, n, k|
      a = R.rand_f32(1, m * k, 1.0)
      b = R.rand_f32(2, k * n, 1.0)
      c0 = R.rand_f32(3, m * n, 1.0)
      c = Cudann.floats(c0)
      assert_equal 0, Cudann.cuda_gemm(Cudann.floats(a), Cudann.floats(b), c, m, n, k, 0.75, -1.5, nil)
      want, bound = R.gemm(a, b, c0, m, n, k, 0.75, -1.5)
      assert_near c.get_array_of_float(0, m * n), want, 1e-5, bound, "gemm #{[m, n, k]}"
    end
  end

  def test_softmax
    rows, cols = 3, 1000
    x = R.f32s(R.rand_f32(4, rows * cols, 8.0).each_with_index.map { |v, i| i < cols ? v + 2000 : v })
    out = Cudann.floats([0] * x.size)
    assert_equal 0, Cudann.cuda_softmax(Cudann.floats(x), out, rows, cols, nil)
    assert_near out.get_array_of_float(0, x.size), R.softmax(x, rows, cols), 1e-5, nil, "softmax"
  end

  def test_rmsnorm
    rows, dim = 4, 33
    x = R.rand_f32(5, rows * dim, 3.0)
    w = R.rand_f32(6, dim, 1.0)
    out = Cudann.floats([0] * x.size)
    assert_equal 0, Cudann.cuda_rmsnorm(Cudann.floats(x), Cudann.floats(w), out, rows, dim, 1e-5, nil)
    want = R.rmsnorm(x, w, dim, R.f32(1e-5))
    assert_near out.get_array_of_float(0, x.size), want, 1e-5, nil, "rmsnorm"
  end

  def test_cross_entropy_forward_and_backward
    rows, vocab = 4, 31
    logits = R.rand_f32(7, rows * vocab, 4.0)
    targets = [3, -100, 30, 0] # -100: a padding row, excluded from the mean
    loss = Cudann.floats([0])
    lp = Cudann.floats([0] * logits.size)
    assert_equal 0, Cudann.cuda_cross_entropy_forward(Cudann.floats(logits), Cudann.int32s(targets),
                                                       loss, lp, rows, vocab, nil)
    want = R.log_softmax(logits, rows, vocab)
    lp_values = lp.get_array_of_float(0, logits.size)
    assert_near lp_values, want, 1e-5, want.map { |v| v.abs + 1 }, "log_probs"
    nll = -(want[3] + want[2 * vocab + 30] + want[3 * vocab]) / 3
    assert_near loss.get_array_of_float(0, 1), [nll], 1e-5, nil, "loss"

    d = Cudann.floats([0] * logits.size)
    assert_equal 0, Cudann.cuda_cross_entropy_backward(lp, Cudann.int32s(targets), d, rows, vocab, 0.5, nil)
    onehot = Array.new(logits.size) { |i| targets[i / vocab] == i % vocab ? 1.0 : 0.0 }
    grad = lp_values.each_with_index.map do |v, i|
      targets[i / vocab].negative? ? 0.0 : (Math.exp(v) - onehot[i]) * 0.5 # padding rows: zero
    end
    scale = lp_values.each_with_index.map { |v, i| (Math.exp(v) + onehot[i]) * 0.5 }
    assert_near d.get_array_of_float(0, logits.size), grad, 1e-5, scale, "d_logits"
  end

  def test_adamw
    n = 257
    p = R.rand_f32(8, n, 1.0)
    m = [0.0] * n
    v = [0.0] * n
    pp, mp, vp = [p, m, v].map { |a| Cudann.floats(a) }
    hyper = [1e-2, 0.9, 0.999, 1e-8, 0.1].map { |h| R.f32(h) }
    (1..3).each do |step|
      g = R.rand_f32(8 + step, n, 1.0)
      want_p, want_m, want_v = R.adamw(p, g, m, v, *hyper, step)
      assert_equal 0, Cudann.cuda_adamw_step(pp, Cudann.floats(g), mp, vp, *hyper, step, n, nil)
      p, m, v = [pp, mp, vp].map { |ptr| ptr.get_array_of_float(0, n) }
      assert_near p, want_p, 1.0, want_p.map { |x| 1e-7 + 1e-6 * x.abs }, "param step #{step}"
      assert_near m, want_m, 1e-6, want_m.each_index.map { |i| want_m[i].abs + 0.1 * g[i].abs }, "m"
      assert_near v, want_v, 1e-6, nil, "v"
    end
  end

  def test_argmax
    rows, vocab = 3, 4097
    x = R.rand_f32(12, rows * vocab, 1.0)
    x[vocab + 9] = x[vocab + 4096] = 7.0 # a tie: the first index wins
    out = Cudann.int32s([0] * rows)
    assert_equal 0, Cudann.cuda_argmax(Cudann.floats(x), out, rows, vocab, nil)
    assert_equal x.each_slice(vocab).map { |row| R.argmax(row) }, out.get_array_of_int32(0, rows)
    assert_equal 9, out.get_array_of_int32(0, rows)[1]
  end

  # `rows` copies of one logits row, each with its own seed.
  def sampling_rows(row, rows)
    [Cudann.floats(row * rows), Cudann.uint64s(Array.new(rows) { |r| (r * 0x9E3779B97F4A7C15 + 7) % 2**64 })]
  end

  def test_topk_sample
    vocab, rows, k = 50, 2000, 5
    row = R.rand_f32(13, vocab, 2.0)
    logits, seeds = sampling_rows(row, rows)
    draws = Array.new(2) do
      out = Cudann.int32s([-1] * rows)
      assert_equal 0, Cudann.cuda_topk_sample(logits, out, seeds, rows, vocab, k, 0.9, nil)
      out.get_array_of_int32(0, rows)
    end
    assert_equal draws[0], draws[1], "same seeds, same tokens"
    top = R.by_value(row).first(k)
    assert_empty draws[0].uniq - top, "tokens outside the top #{k}"
    assert_equal top.sort, draws[0].uniq.sort, "every top-#{k} token is drawn sometimes"
  end

  def test_topp_sample
    vocab, rows = 100, 2000
    row = R.rand_f32(14, vocab, 5.0)
    logits, seeds = sampling_rows(row, rows)
    [0.2, 0.6, 0.95].each do |top_p|
      out = Cudann.int32s([-1] * rows)
      assert_equal 0, Cudann.cuda_topp_sample(logits, out, seeds, rows, vocab, top_p, 1.0, nil)
      nucleus = R.nucleus(R.softmax(row, 1, vocab), R.f32(top_p))
      assert_empty out.get_array_of_int32(0, rows).uniq - nucleus, "top_p #{top_p}: outside the nucleus"
    end
    out = Cudann.int32s([-1] * rows)
    assert_equal 0, Cudann.cuda_topp_sample(logits, out, seeds, rows, vocab, 0.9, 0.0, nil)
    assert_equal [R.argmax(row)], out.get_array_of_int32(0, rows).uniq, "temperature 0 is argmax"
  end

  def test_error_path
    out = Cudann.int32s([-7, -7])
    rc = Cudann.cuda_topk_sample(Cudann.floats([0] * 8), out, Cudann.uint64s([1, 2]), 2, 4, 0, 1.0, nil)
    assert_equal Cudann::INVALID_VALUE, rc
    assert_equal "cuda_topk_sample: k must be >= 1 (got 0)", Cudann.cudann_last_error
    assert_equal [-7, -7], out.get_array_of_int32(0, 2), "output untouched on error"
    assert_equal 0, Cudann.cuda_silu(Cudann.floats([1]), Cudann.floats([0]), 1, nil)
    assert_equal "", Cudann.cudann_last_error, "a success clears the message"
  end

  def test_threads_match_serial
    inputs = Array.new(12) { |i| [R.rand_f32(100 + i, 96 * 128, 1.0), R.rand_f32(200 + i, 128 * 64, 1.0)] }
    jobs = Array.new(12) do |i|
      a, b = inputs[i].map { |v| Cudann.floats(v) }
      x = Cudann.floats(R.rand_f32(300 + i, 16 * 4097, 6.0))
      lambda do
        c = Cudann.floats([0] * (96 * 64))
        s = Cudann.floats([0] * (16 * 4097))
        ok = Cudann.cuda_gemm(a, b, c, 96, 64, 128, 1.0, 0.0, nil).zero? &
             Cudann.cuda_softmax(x, s, 16, 4097, nil).zero?
        # An error on this thread reports its own message, whatever the others do.
        bad = Cudann.cuda_silu(a, c, -(i + 1), nil)
        [ok, bad, Cudann.cudann_last_error, c.get_bytes(0, c.size), s.get_bytes(0, s.size)]
      end
    end
    serial = jobs.map(&:call)
    serial.each_with_index do |(ok, bad, msg), i|
      assert ok
      assert_equal [-2, "cuda_silu: n must be >= 0 (got #{-(i + 1)})"], [bad, msg]
    end
    # The serial results are right, too (not two wrong answers agreeing).
    want, bound = R.gemm(*inputs[0], [0.0] * (96 * 64), 96, 64, 128, 1.0, 0.0)
    assert_near serial[0][3].unpack("f*"), want, 1e-5, bound, "serial gemm"
    3.times do
      assert_equal serial, jobs.map { |job| Thread.new(&job) }.map(&:value), "threads differ from serial"
    end
  end
end
