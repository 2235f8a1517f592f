# frozen_string_literal: true

require "minitest/autorun"
require "tmpdir"
require_relative "cudann_ffi"
require_relative "reference"

class CudannTest < Minitest::Test
  R = Reference

  def assert_near(got, want, rtol, scale = nil, what = "")
    err = R.mismatch(got, want, rtol, scale)
    assert_nil err, "#{what}: #{err}"
  end

  def assert_invalid(rc, message)
    assert_equal Cudann::INVALID_VALUE, rc
    assert_includes Cudann.cudann_last_error, message
  end

  # Calls the block with an out-parameter of `type`; asserts success and returns the value.
  def out_param(type)
    ptr = FFI::MemoryPointer.new(type)
    assert_equal 0, yield(ptr)
    ptr.public_send(:"read_#{type}")
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

  def test_gemm_ex
    # Two C_i = 0.5 A_i Bᵀ - 2 C_i: A_i 3x5 (row stride 7), one shared B 4x5 (row stride 6),
    # C_i 3x4 (row stride 6, 18 apart); the padding must stay.
    m, n, k, batch = 3, 4, 5, 2
    lda, stride_a, ldb, ldc, stride_c = 7, 22, 6, 6, 18
    a = R.rand_f32(20, batch * stride_a, 1.0)
    b = R.rand_f32(21, n * ldb, 1.0)
    c0 = R.rand_f32(22, batch * stride_c, 1.0)
    c = Cudann.floats(c0)
    gemm = lambda do |a_type|
      Cudann.cudann_gemm_ex(0, 1, m, n, k, 0.5, Cudann.floats(a), a_type, lda, stride_a, Cudann.floats(b), Cudann::F32,
                            ldb, 0, -2.0, c, Cudann::F32, ldc, stride_c, batch, nil)
    end
    assert_invalid gemm.call(Cudann::BF16), "not supported yet"
    assert_equal c0, c.get_array_of_float(0, c0.size), "C untouched on error"
    assert_equal 0, gemm.call(Cudann::F32)
    want, bound = R.gemm_ex(false, true, m, n, k, 0.5, a, lda, stride_a, b, ldb, 0, -2.0, c0, ldc, stride_c, batch)
    assert_near c.get_array_of_float(0, c0.size), want, 1e-5, bound, "gemm_ex"
  end

  def test_swiglu_forward_and_backward
    n = 1000
    gate = R.rand_f32(23, n, 8.0)
    up = R.rand_f32(24, n, 2.0)
    dy = R.rand_f32(25, n, 1.0)
    out, d_gate, d_up = Array.new(3) { Cudann.floats([0] * n) }
    assert_equal 0, Cudann.cudann_swiglu(Cudann.floats(gate), Cudann.floats(up), out, n, Cudann::F32, nil)
    assert_near out.get_array_of_float(0, n), R.swiglu(gate, up), 1e-5, nil, "swiglu"
    assert_equal 0, Cudann.cudann_swiglu_backward(Cudann.floats(dy), Cudann.floats(gate), Cudann.floats(up),
                                                  d_gate, d_up, n, nil)
    R.swiglu_backward(dy, gate, up).zip([d_gate, d_up], %w[d_gate d_up]).each do |want, got, name|
      # silu' has a root: an absolute floor
      assert_near got.get_array_of_float(0, n), want, 1e-5, R.abs_plus(want, 1e-2), name
    end
  end

  def test_rmsnorm_backward
    rows, dim = 3, 5
    eps = R.f32(1e-5)
    x = R.rand_f32(26, rows * dim, 2.0)
    w = R.rand_f32(27, dim, 1.0)
    dy = R.rand_f32(28, rows * dim, 1.0)
    d_in = Cudann.floats([0] * x.size)
    d_w = Cudann.floats([0] * dim)
    assert_equal 0, Cudann.cudann_rmsnorm_backward(Cudann.floats(dy), Cudann.floats(x), Cudann.floats(w),
                                                   d_in, d_w, rows, dim, eps, nil)
    [[x, d_in, "d_input"], [w, d_w, "d_weight"]].each do |param, got, name|
      want = R.num_grad(param) { R.dot(dy, R.rmsnorm(x, w, dim, eps)) }
      assert_near got.get_array_of_float(0, param.size), want, 1e-4, R.abs_plus(want, 1e-3), name
    end
  end

  def test_attention_forward_and_backward
    # Causal GQA: 4 query heads on 2 KV heads, 4 positions, head_dim 3.
    seq, heads, kv_heads, dim = 4, 4, 2, 3
    scale = R.f32(1 / Math.sqrt(3))
    q = R.rand_f32(29, seq * heads * dim, 2.0)
    k = R.rand_f32(30, seq * kv_heads * dim, 2.0)
    v = R.rand_f32(31, seq * kv_heads * dim, 1.0)
    inputs = [q, k, v].map { |x| Cudann.floats(x) }
    out = Cudann.floats([0] * q.size)
    lse = Cudann.floats([0] * (seq * heads))
    assert_equal 0, Cudann.cudann_attention_forward(*inputs, nil, out, lse, 1, seq, seq, seq, heads, kv_heads, dim,
                                                    0, 1, scale, Cudann::F32, nil)
    attention = -> { R.attention(q, k, v, 1, seq, seq, heads, kv_heads, dim, 0, true, scale) }
    want_out, want_lse = attention.call
    assert_near out.get_array_of_float(0, q.size), want_out, 1e-5, R.abs_plus(want_out, 1.0), "output"
    assert_near lse.get_array_of_float(0, seq * heads), want_lse, 1e-5, R.abs_plus(want_lse, 1.0), "lse"

    dy = R.rand_f32(32, q.size, 1.0)
    grads = [q, k, v].map { |x| Cudann.floats([0] * x.size) }
    assert_equal 0, Cudann.cudann_attention_backward(Cudann.floats(dy), *inputs, nil, out, lse, *grads,
                                                     1, seq, seq, heads, kv_heads, dim, 0, 1, scale, nil)
    [q, k, v].zip(grads, %w[d_q d_k d_v]).each do |param, got, name|
      want = R.num_grad(param) { R.dot(dy, attention.call[0]) }
      assert_near got.get_array_of_float(0, param.size), want, 1e-3, R.abs_plus(want, 1e-3), name
    end
  end

  def test_embedding_forward_and_backward
    vocab, dim = 5, 3
    ids = [3, -1, 0, 3, 1] # -1: padding, a zero row; rows 2 and 4 unused
    table = R.rand_f32(33, vocab * dim, 1.0)
    dy = R.rand_f32(34, ids.size * dim, 1.0)
    out = Cudann.floats([0] * (ids.size * dim))
    d_table = Cudann.floats(R.rand_f32(35, vocab * dim, 1.0)) # written, not accumulated
    assert_equal 0, Cudann.cudann_embedding(Cudann.int32s(ids), Cudann.floats(table), out, ids.size, vocab, dim,
                                            Cudann::F32, nil)
    assert_equal R.embedding(ids, table, dim), out.get_array_of_float(0, ids.size * dim)
    assert_equal 0, Cudann.cudann_embedding_backward(Cudann.int32s(ids), Cudann.floats(dy), d_table, ids.size,
                                                     vocab, dim, nil)
    assert_near d_table.get_array_of_float(0, vocab * dim), R.embedding_backward(ids, dy, vocab, dim), 1e-6, nil,
                "d_table"
  end

  def test_moe_dispatch_and_combine
    tokens, dim, experts, k = 4, 3, 4, 2
    indices = [2, 0, 0, 2, 3, 0, 2, 3] # expert 1 unused
    input = R.rand_f32(36, tokens * dim, 1.0)
    out = Cudann.floats([0] * (tokens * k * dim))
    order = Cudann.int32s([0] * (tokens * k))
    offsets = Cudann.int32s([0] * (experts + 1))
    assert_equal 0, Cudann.cudann_moe_dispatch(Cudann.floats(input), Cudann.int32s(indices), out, order, offsets,
                                               tokens, dim, experts, k, nil)
    want_out, want_order, want_offsets = R.moe_dispatch(input, indices, dim, experts, k)
    assert_equal want_order, order.get_array_of_int32(0, tokens * k), "order"
    assert_equal want_offsets, offsets.get_array_of_int32(0, experts + 1), "offsets"
    assert_equal want_out, out.get_array_of_float(0, tokens * k * dim), "dispatched rows"

    expert_out = R.rand_f32(37, tokens * k * dim, 1.0)
    w = R.rand_f32(38, tokens * k, 1.0)
    combined = Cudann.floats([0] * (tokens * dim))
    assert_equal 0, Cudann.cudann_moe_combine(Cudann.floats(expert_out), Cudann.floats(w), order, combined,
                                              tokens, dim, k, nil)
    want = R.moe_combine(expert_out, w, want_order, dim, k)
    assert_near combined.get_array_of_float(0, tokens * dim), want, 1e-6, R.abs_plus(want, 1e-6), "combine"
  end

  def test_safetensors_round_trip
    tensors = { "weight" => [Cudann::F32, [2, 3], Cudann.floats(R.rand_f32(39, 6, 1.0))],
                "steps" => [Cudann::I32, [3], Cudann.int32s([7, -1, 1 << 30])] }
    Dir.mktmpdir do |dir|
      path = File.join(dir, "ckpt.safetensors")
      writer = out_param(:pointer) { |p| Cudann.cudann_safetensors_writer_create(p) }
      tensors.each do |name, (dtype, shape, data)|
        assert_equal 0, Cudann.cudann_safetensors_writer_add(writer, name, dtype, shape.size, Cudann.int64s(shape),
                                                             data, nil)
      end
      assert_equal 0, Cudann.cudann_safetensors_writer_save(writer, path)
      assert_equal 0, Cudann.cudann_safetensors_writer_free(writer)

      file = out_param(:pointer) { |p| Cudann.cudann_safetensors_open(path, p) }
      count = out_param(:int64) { |p| Cudann.cudann_safetensors_count(file, p) }
      names = Array.new(count) { |i| out_param(:pointer) { |p| Cudann.cudann_safetensors_name(file, i, p) }.read_string }
      assert_equal tensors.keys.sort, names.sort
      tensors.each do |name, (dtype, shape, data)|
        type, ndim = Array.new(2) { FFI::MemoryPointer.new(:int) }
        dims = FFI::MemoryPointer.new(:int64, 8)
        assert_equal 0, Cudann.cudann_safetensors_info(file, name, type, ndim, dims, 8)
        assert_equal [dtype, shape], [type.read_int, dims.get_array_of_int64(0, ndim.read_int)], name
        back = FFI::MemoryPointer.new(data.size)
        assert_equal 0, Cudann.cudann_safetensors_read(file, name, dtype, back, shape.inject(:*), nil)
        assert_equal data.get_bytes(0, data.size), back.get_bytes(0, data.size), name
      end
      assert_equal 0, Cudann.cudann_safetensors_close(file)

      truncated = File.join(dir, "truncated.safetensors")
      File.binwrite(truncated, File.binread(path)[0...-1])
      assert_invalid Cudann.cudann_safetensors_open(truncated, FFI::MemoryPointer.new(:pointer)),
                     "not a valid safetensors file"
    end
  end

  # Library memory of `bytes` from cudann_malloc.
  def dev_alloc(bytes)
    out_param(:pointer) { |p| Cudann.cudann_malloc(p, bytes) }.tap { |ptr| refute ptr.null?, "cudann_malloc(#{bytes})" }
  end

  def download(ptr, n, stream = nil)
    host = Cudann.floats([Float::NAN] * n)
    assert_equal 0, Cudann.cudann_memcpy(host, ptr, 4 * n, stream), Cudann.cudann_last_error
    host.get_array_of_float(0, n)
  end

  # Library memory as a GPU program uses it: upload from FFI::MemoryPointers, three
  # ops on a library stream (rmsnorm, softmax of its output, silu in place on the
  # input rmsnorm read first), synchronize, download, check against float64, free.
  def test_device_memory_pipeline
    rows, dim = 13, 257
    n = rows * dim
    x = R.rand_f32(40, n, 3.0)
    w = R.rand_f32(41, dim, 1.0)
    dx, dy, ds = Array.new(3) { dev_alloc(4 * n) }
    dw = dev_alloc(4 * dim)
    stream = out_param(:pointer) { |p| Cudann.cudann_stream_create(p) }
    assert_equal 0, Cudann.cudann_memcpy(dx, Cudann.floats(x), 4 * n, stream)
    assert_equal 0, Cudann.cudann_memcpy(dw, Cudann.floats(w), 4 * dim, stream)
    [dy, ds].each { |d| assert_equal 0, Cudann.cudann_memset(d, 0xff, 4 * n, stream) } # NaN: a missed element shows
    assert_equal 0, Cudann.cuda_rmsnorm(dx, dw, dy, rows, dim, 1e-5, stream), Cudann.cudann_last_error
    assert_equal 0, Cudann.cuda_softmax(dy, ds, rows, dim, stream), Cudann.cudann_last_error
    assert_equal 0, Cudann.cuda_silu(dx, dx, n, stream), Cudann.cudann_last_error
    assert_equal 0, Cudann.cudann_stream_synchronize(stream)
    y = download(dy, n)
    assert_near y, R.rmsnorm(x, w, dim, R.f32(1e-5)), 1e-5, nil, "rmsnorm on library memory"
    assert_near download(ds, n), R.softmax(y, rows, dim), 1e-5, nil, "softmax of the rmsnorm output"
    assert_near download(dx, n), x.map { |v| v / (1 + Math.exp(-v)) }, 5e-7, nil, "silu in place after rmsnorm"
    assert_equal 0, Cudann.cudann_stream_destroy(stream)
    [dx, dw, dy, ds].each { |d| assert_equal 0, Cudann.cudann_free(d) }
    assert_invalid Cudann.cudann_free(dx), "already freed"
    assert_equal 0, Cudann.cudann_free(nil), "NULL: nothing to do"
  end

  # Misuse is -2 and writes nothing.
  def test_device_memory_misuse
    ramp = (0...16).map(&:to_f)
    buf = dev_alloc(64)
    assert_equal 0, Cudann.cudann_memcpy(buf, Cudann.floats(ramp), 64, nil)
    host = Cudann.floats([7.0] * 32)
    assert_invalid Cudann.cudann_memcpy(host, buf, 128, nil), "pass the end of a 64-byte allocation"
    assert_equal [7.0] * 32, host.get_array_of_float(0, 32), "host destination untouched"
    assert_invalid Cudann.cudann_memcpy(buf + 32, host, 36, nil), "pass the end of a 64-byte allocation"
    assert_invalid Cudann.cudann_memset(buf, 0, -1, nil), "bytes"
    assert_invalid Cudann.cudann_free(buf + 4), "not the start of a live allocation"
    assert_invalid Cudann.cudann_malloc(FFI::MemoryPointer.new(:pointer), -1), "bytes"
    assert_equal ramp, download(buf, 16), "allocation intact after the refused calls"

    stream = out_param(:pointer) { |p| Cudann.cudann_stream_create(p) }
    assert_equal 0, Cudann.cudann_stream_destroy(stream)
    assert_invalid Cudann.cudann_stream_destroy(stream), "destroyed"
    assert_invalid Cudann.cudann_stream_synchronize(stream), "destroyed"
    assert_invalid Cudann.cudann_memcpy(host, buf, 64, stream), "destroyed"
    assert_invalid Cudann.cuda_silu(buf, buf, 16, stream), "destroyed"
    assert_equal ramp, download(buf, 16), "an op on a destroyed stream writes nothing"
    assert_equal 0, Cudann.cudann_free(buf)
  end

  def test_devices_and_backend
    backend = Cudann.cudann_backend
    assert_match(/\A(cpu|cuda): /, backend)
    count = out_param(:int) { |p| Cudann.cudann_device_count(p) }
    assert_equal backend.start_with?("cpu: "), count.zero?, "#{count} devices on #{backend}"
    # The current device is per OS thread; a Ruby thread keeps its own.
    assert_equal 0, Cudann.cudann_set_device(0)
    assert_equal 0, out_param(:int) { |p| Cudann.cudann_get_device(p) }
    assert_invalid Cudann.cudann_set_device([count, 1].max), "device"
    free, total = Array.new(2) { FFI::MemoryPointer.new(:int64) }
    assert_equal 0, Cudann.cudann_mem_info(free, total)
    assert_operator 0, :<, free.read_int64
    assert_operator free.read_int64, :<=, total.read_int64
    assert_invalid Cudann.cudann_mem_info(nil, total), "NULL"
    assert_equal 0, Cudann.cudann_device_synchronize
    pinned = out_param(:pointer) { |p| Cudann.cudann_malloc_host(p, 16) }
    assert_equal 0, Cudann.cudann_memcpy(pinned, Cudann.floats([1, 2, 3, 4]), 16, nil)
    assert_equal [1.0, 2.0, 3.0, 4.0], download(pinned, 4), "page-locked round trip"
    assert_equal 0, Cudann.cudann_free(pinned)
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
