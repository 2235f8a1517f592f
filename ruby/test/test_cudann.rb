# frozen_string_literal: true

require "tmpdir"
require_relative "test_helper"

# The ops through the gem's API, against the float64 references.
class CudannOpsTest < CudannTestCase
  def test_version
    assert_match(/\A\d+\.\d+\.\d+\z/, Cudann.library_version)
    assert_match(/\A\d+\.\d+\.\d+\z/, Cudann::VERSION)
  end

  def test_gemm
    [[1, 1, 1], [33, 31, 17], [5, 4097, 2]].each do |m, n, k|
      a = R.rand_f32(1, m * k, 1.0)
      b = R.rand_f32(2, k * n, 1.0)
      c0 = R.rand_f32(3, m * n, 1.0)
      c = c0.dup
      assert_same c, Cudann.gemm(a, b, m, n, k, 0.75, -1.5, c: c)
      want, bound = R.gemm(a, b, c0, m, n, k, 0.75, -1.5)
      assert_near c, want, 1e-5, bound, "gemm #{[m, n, k]}"
    end
  end

  def test_softmax
    rows, cols = 3, 1000
    x = R.f32s(R.rand_f32(4, rows * cols, 8.0).each_with_index.map { |v, i| i < cols ? v + 2000 : v })
    assert_near Cudann.softmax(x, rows, cols), R.softmax(x, rows, cols), 1e-5, nil, "softmax"
    assert_near Cudann.softmax(x, cols: cols, rows: rows), R.softmax(x, rows, cols), 1e-5, nil, "keywords"
  end

  def test_rmsnorm
    rows, dim = 4, 33
    x = R.rand_f32(5, rows * dim, 3.0)
    w = R.rand_f32(6, dim, 1.0)
    want = R.rmsnorm(x, w, dim, R.f32(1e-5))
    assert_near Cudann.rmsnorm(x, w, rows, dim, 1e-5), want, 1e-5, nil, "rmsnorm"
  end

  def test_cross_entropy_forward_and_backward
    rows, vocab = 4, 31
    logits = R.rand_f32(7, rows * vocab, 4.0)
    targets = [3, -100, 30, 0] # -100: a padding row, excluded from the mean
    loss, lp_values = Cudann.cross_entropy_forward(logits, targets, rows, vocab)
    want = R.log_softmax(logits, rows, vocab)
    assert_near lp_values, want, 1e-5, want.map { |v| v.abs + 1 }, "log_probs"
    nll = -(want[3] + want[2 * vocab + 30] + want[3 * vocab]) / 3
    assert_near loss, [nll], 1e-5, nil, "loss"

    d = Cudann.cross_entropy_backward(lp_values, targets, rows, vocab, 0.5)
    onehot = Array.new(logits.size) { |i| targets[i / vocab] == i % vocab ? 1.0 : 0.0 }
    grad = lp_values.each_with_index.map do |v, i|
      targets[i / vocab].negative? ? 0.0 : (Math.exp(v) - onehot[i]) * 0.5 # padding rows: zero
    end
    scale = lp_values.each_with_index.map { |v, i| (Math.exp(v) + onehot[i]) * 0.5 }
    assert_near d, grad, 1e-5, scale, "d_logits"
  end

  def test_adamw
    n = 257
    p = R.rand_f32(8, n, 1.0)
    m = [0.0] * n
    v = [0.0] * n
    hyper = [1e-2, 0.9, 0.999, 1e-8, 0.1].map { |h| R.f32(h) }
    (1..3).each do |step|
      g = R.rand_f32(8 + step, n, 1.0)
      want_p, want_m, want_v = R.adamw(p, g, m, v, *hyper, step)
      p, m, v = [p, m, v].map(&:dup)
      assert_equal [p, m, v], Cudann.adamw_step(p, g, m, v, *hyper, step) # in place, and returned
      assert_near p, want_p, 1.0, want_p.map { |x| 1e-7 + 1e-6 * x.abs }, "param step #{step}"
      assert_near m, want_m, 1e-6, want_m.each_index.map { |i| want_m[i].abs + 0.1 * g[i].abs }, "m"
      assert_near v, want_v, 1e-6, nil, "v"
    end
  end

  def test_argmax
    rows, vocab = 3, 4097
    x = R.rand_f32(12, rows * vocab, 1.0)
    x[vocab + 9] = x[vocab + 4096] = 7.0 # a tie: the first index wins
    out = Cudann.argmax(x, rows, vocab)
    assert_equal x.each_slice(vocab).map { |row| R.argmax(row) }, out
    assert_equal 9, out[1]
  end

  # `rows` copies of one logits row, each with its own seed.
  def sampling_rows(row, rows)
    [row * rows, Array.new(rows) { |r| (r * 0x9E3779B97F4A7C15 + 7) % 2**64 }]
  end

  def test_topk_sample
    vocab, rows, k = 50, 2000, 5
    row = R.rand_f32(13, vocab, 2.0)
    logits, seeds = sampling_rows(row, rows)
    draws = Array.new(2) do
      Cudann.topk_sample(logits, seeds, rows, vocab, k, 0.9)
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
      out = Cudann.topp_sample(logits, seeds, rows, vocab, top_p, 1.0)
      nucleus = R.nucleus(R.softmax(row, 1, vocab), R.f32(top_p))
      assert_empty out.uniq - nucleus, "top_p #{top_p}: outside the nucleus"
    end
    out = Cudann.topp_sample(logits, seeds, rows, vocab, 0.9, 0.0)
    assert_equal [R.argmax(row)], out.uniq, "temperature 0 is argmax"
    out = Cudann.sample(logits, seeds, rows, vocab, 0.0)
    assert_equal [R.argmax(row)], out.uniq, "plain sampling at temperature 0 is argmax"
  end

  def test_error_path
    out = [-7, -7]
    err = assert_invalid("cuda_topk_sample: k must be >= 1 (got 0)") do
      Cudann.topk_sample([0.0] * 8, [1, 2], 2, 4, 0, 1.0, out: out)
    end
    assert_equal "cuda_topk_sample: k must be >= 1 (got 0)", err.message
    assert_kind_of StandardError, err
    assert_equal [-7, -7], out, "output untouched on error"
    assert_equal [0.7310585975646973], Cudann.silu([1.0])
  end

  # Wrong lengths are refused before the call, naming the argument.
  def test_shape_checks
    out = [9.0] * 5
    assert_invalid("Cudann.softmax: out has 5 elements, want 6 (rows*cols)") { Cudann.softmax([0.0] * 6, 2, 3, out: out) }
    assert_equal [9.0] * 5, out
    assert_invalid("rows must be an Integer >= 0 (got -1)") { Cudann.softmax([0.0] * 6, -1, 3) }
    assert_invalid("b has 2 elements, want 3") { Cudann.add([1.0, 2, 3], [1.0, 2]) }
    assert_invalid("seeds has 1 elements, want 2") { Cudann.sample([0.0] * 6, [1], 2, 3, 1.0) }
    assert_invalid("freqs has 1 elements, want at least 2") { Cudann.rope_forward([0.0] * 4, [0.0], 1, 1, 1, 4, 0) }
    assert_raises(ArgumentError) { Cudann.softmax([0.0] * 6, 2) }
    assert_raises(ArgumentError) { Cudann.softmax([0.0] * 6, 2, 3, bogus: 1) }
  end

  # FFI::MemoryPointers are used in place; new outputs are MemoryPointers too.
  def test_memory_pointers
    x = FFI::MemoryPointer.new(:float, 4).tap { |p| p.put_array_of_float(0, [-1.0, 0.0, 1.0, 2.0]) }
    y = Cudann.silu(x)
    assert_kind_of FFI::MemoryPointer, y
    assert_near y.get_array_of_float(0, 4), [-1.0, 0.0, 1.0, 2.0].map { |v| v / (1 + Math.exp(-v)) }, 5e-7
    assert_same x, Cudann.silu(x, out: x)
    assert_invalid("input holds 6 bytes") { Cudann.silu(FFI::MemoryPointer.new(:uint8, 6)) }
  end

  def test_numo
    skip "numo-narray is not installed" unless defined?(Numo::NArray)

    x = Numo::SFloat[[-1, 0], [1, 2]]
    y = Cudann.silu(x)
    assert_kind_of Numo::SFloat, y
    assert_near y.to_a, [-1.0, 0.0, 1.0, 2.0].map { |v| v / (1 + Math.exp(-v)) }, 5e-7
    out = Numo::SFloat.zeros(2, 2)
    Cudann.softmax(x, 2, 2, out: out)
    assert_near out.to_a.flatten, R.softmax([-1.0, 0.0, 1.0, 2.0], 2, 2), 1e-6
  end

  def test_gemm_ex
    # Two C_i = 0.5 A_i Bᵀ - 2 C_i: A_i 3x5 (row stride 7), one shared B 4x5 (row stride 6),
    # C_i 3x4 (row stride 6, 18 apart); the padding must stay.
    m, n, k, batch = 3, 4, 5, 2
    lda, stride_a, ldb, ldc, stride_c = 7, 22, 6, 6, 18
    a = R.rand_f32(20, batch * stride_a, 1.0)
    b = R.rand_f32(21, n * ldb, 1.0)
    c0 = R.rand_f32(22, batch * stride_c, 1.0)
    c = c0.dup
    gemm = lambda do |a_type|
      Cudann.gemm_ex(a, b, c, m: m, n: n, k: k, trans_b: true, alpha: 0.5, beta: -2.0, a_type: a_type,
                              lda: lda, stride_a: stride_a, ldb: ldb, ldc: ldc, stride_c: stride_c, batch: batch)
    end
    assert_invalid("cudann_gemm_ex") { gemm.call(99) }
    assert_equal c0, c, "C untouched on error"
    assert_same c, gemm.call(Cudann::F32)
    want, bound = R.gemm_ex(false, true, m, n, k, 0.5, a, lda, stride_a, b, ldb, 0, -2.0, c0, ldc, stride_c, batch)
    assert_near c, want, 1e-5, bound, "gemm_ex"
    assert_invalid("a has 40 elements, want at least 41") { Cudann.gemm_ex(a[0, 40], b, c, m: 3, n: 4, k: 5, trans_b: true, lda: 7, stride_a: 22, ldb: 6, ldc: 6, stride_c: 18, batch: 2) }
  end

  # C_g = 0.5 op(A_g) op(B_g) - 1.5 C_g over 3 groups, C's rows padded (ldc = n + 1). Rows grouped: rows 1 to 6
  # of m = 8 in groups (the first empty; rows 0 and 7, and the padding, must stay), one A and C, a B per group.
  # K grouped (weight gradients): k = 9 split 0...3, 3...3, 3...9, one A and B, a C per group (the empty
  # group's is -1.5 C_g). Entries no group writes have a zero error scale: they must be unchanged.
  def test_gemm_grouped
    n = 5
    ldc = 6
    [false, true].each do |inner|
      m, k, offsets = inner ? [4, 9, [0, 3, 3, 9]] : [8, 6, [1, 1, 4, 7]]
      stride_b, stride_c, nb, nc = inner ? [0, m * ldc, k * n, 3 * m * ldc] : [k * n, 0, 3 * k * n, m * ldc]
      [[false, false], [false, true], [true, false], [true, true]].each do |ta, tb|
        a = R.rand_f32(40, m * k, 1.0)
        b = R.rand_f32(41, nb, 1.0)
        c0 = R.rand_f32(42, nc, 1.0)
        c = c0.dup
        assert_same c, Cudann.gemm_grouped(a, b, c, offsets, m: m, n: n, k: k, group_inner: inner, trans_a: ta,
                                                             trans_b: tb, alpha: 0.5, beta: -1.5, ldc: ldc,
                                                             stride_b: stride_b, stride_c: stride_c)
        want, bound = R.gemm_grouped(ta, tb, inner, m, n, k, 0.5, a, ta ? m : k, 0, b, tb ? k : n, stride_b, -1.5,
                                     c0, ldc, stride_c, offsets)
        assert_near c, want, 1e-5, bound, "gemm_grouped inner=#{inner} trans=#{[ta, tb]}"
      end
    end
  end

  def test_gemm_grouped_library_memory_and_errors
    m, n, k = 8, 5, 4
    offsets = [0, 2, 2, 8]
    a = R.rand_f32(43, m * k, 1.0)
    b = R.rand_f32(44, 3 * k * n, 1.0)
    c0 = R.rand_f32(45, m * n, 1.0)
    want, bound = R.gemm_grouped(false, false, false, m, n, k, 1.0, a, k, 0, b, n, k * n, 0.25, c0, n, 0, offsets)
    # Library memory, offsets included (read where the call runs).
    da, db, dc = [a, b, c0].map { |x| Cudann::Memory.from(x) }
    doff = Cudann::Memory.from(offsets, type: :int32)
    Cudann.gemm_grouped(da, db, dc, doff, m: m, n: n, k: k, beta: 0.25, stride_b: k * n)
    assert_near dc.download, want, 1e-5, bound, "gemm_grouped on library memory"
    [da, db, dc, doff].each(&:free)

    # Offsets out of order or range: the library's error, nothing written.
    c = c0.dup
    grouped = ->(offs, bs = b) { Cudann.gemm_grouped(a, bs, c, offs, m: m, n: n, k: k, stride_b: k * n) }
    err = assert_invalid("offsets may not decrease") { grouped.call([0, 3, 2, 8]) }
    assert_equal "cudann_gemm_grouped: offsets[2] = 2 is less than offsets[1] = 3 (offsets may not decrease)",
                 err.message
    err = assert_invalid("is outside") { grouped.call([0, 3, 5, 9]) }
    assert_equal "cudann_gemm_grouped: offsets[3] = 9 is outside [0, m = 8]", err.message
    assert_equal c0, c, "C untouched on error"
    assert_invalid("Cudann.gemm_grouped: offsets must hold groups + 1 entries (got none)") { grouped.call([]) }
    assert_invalid("b has 40 elements, want at least 60") { grouped.call(offsets, b[0, 2 * k * n]) }
  end

  def test_swiglu_forward_and_backward
    n = 1000
    gate = R.rand_f32(23, n, 8.0)
    up = R.rand_f32(24, n, 2.0)
    dy = R.rand_f32(25, n, 1.0)
    assert_near Cudann.swiglu(gate, up), R.swiglu(gate, up), 1e-5, nil, "swiglu"
    got = Cudann.swiglu_backward(dy, gate, up)
    R.swiglu_backward(dy, gate, up).zip(got, %w[d_gate d_up]).each do |want, g, name|
      # silu' has a root: an absolute floor
      assert_near g, want, 1e-5, R.abs_plus(want, 1e-2), name
    end
  end

  def test_rmsnorm_backward
    rows, dim = 3, 5
    eps = R.f32(1e-5)
    x = R.rand_f32(26, rows * dim, 2.0)
    w = R.rand_f32(27, dim, 1.0)
    dy = R.rand_f32(28, rows * dim, 1.0)
    d_in, d_w = Cudann.rmsnorm_backward(dy, x, w, rows, dim, eps)
    [[x, d_in, "d_input"], [w, d_w, "d_weight"]].each do |param, got, name|
      want = R.num_grad(param) { R.dot(dy, R.rmsnorm(x, w, dim, eps)) }
      assert_near got, want, 1e-4, R.abs_plus(want, 1e-3), name
    end
  end

  def test_attention_forward_and_backward
    # Causal GQA: 4 query heads on 2 KV heads, 4 positions, head_dim 3.
    seq, heads, kv_heads, dim = 4, 4, 2, 3
    scale = R.f32(1 / Math.sqrt(3))
    q = R.rand_f32(29, seq * heads * dim, 2.0)
    k = R.rand_f32(30, seq * kv_heads * dim, 2.0)
    v = R.rand_f32(31, seq * kv_heads * dim, 1.0)
    shape = { batch: 1, q_len: seq, kv_len: seq, n_heads: heads, n_kv_heads: kv_heads, head_dim: dim, pos0: 0,
              is_causal: true, scale: scale }
    out, lse = Cudann.attention_forward(q, k, v, kv_capacity: seq, **shape)
    attention = -> { R.attention(q, k, v, 1, seq, seq, heads, kv_heads, dim, 0, true, scale) }
    want_out, want_lse = attention.call
    assert_near out, want_out, 1e-5, R.abs_plus(want_out, 1.0), "output"
    assert_near lse, want_lse, 1e-5, R.abs_plus(want_lse, 1.0), "lse"

    dy = R.rand_f32(32, q.size, 1.0)
    grads = Cudann.attention_backward(dy, q, k, v, out, lse, **shape)
    [q, k, v].zip(grads, %w[d_q d_k d_v]).each do |param, got, name|
      want = R.num_grad(param) { R.dot(dy, attention.call[0]) }
      assert_near got, want, 1e-3, R.abs_plus(want, 1e-3), name
    end
  end

  def test_embedding_forward_and_backward
    vocab, dim = 5, 3
    ids = [3, -1, 0, 3, 1] # -1: padding, a zero row; rows 2 and 4 unused
    table = R.rand_f32(33, vocab * dim, 1.0)
    dy = R.rand_f32(34, ids.size * dim, 1.0)
    d_table = R.rand_f32(35, vocab * dim, 1.0) # written, not accumulated
    assert_equal R.embedding(ids, table, dim), Cudann.embedding(ids, table, ids.size, vocab, dim)
    Cudann.embedding_backward(ids, dy, ids.size, vocab, dim, d_table: d_table)
    assert_near d_table, R.embedding_backward(ids, dy, vocab, dim), 1e-6, nil, "d_table"
    # scatter_add accumulates
    acc = [1.0] * (vocab * dim)
    Cudann.scatter_add(dy, ids, acc, ids.size, dim)
    assert_near acc, R.embedding_backward(ids, dy, vocab, dim).map { |x| x + 1 }, 1e-6, nil, "scatter_add"
    assert_invalid("index 5 is outside grad_weight's 5 rows") { Cudann.scatter_add(dy, [5, 0, 0, 0, 0], acc, 5, dim) }
  end

  def test_moe_dispatch_and_combine
    tokens, dim, experts, k = 4, 3, 4, 2
    indices = [2, 0, 0, 2, 3, 0, 2, 3] # expert 1 unused
    input = R.rand_f32(36, tokens * dim, 1.0)
    out, order, offsets = Cudann.moe_dispatch(input, indices, tokens, dim, experts, k)
    want_out, want_order, want_offsets = R.moe_dispatch(input, indices, dim, experts, k)
    assert_equal want_order, order, "order"
    assert_equal want_offsets, offsets, "offsets"
    assert_equal want_out, out, "dispatched rows"

    expert_out = R.rand_f32(37, tokens * k * dim, 1.0)
    w = R.rand_f32(38, tokens * k, 1.0)
    want = R.moe_combine(expert_out, w, want_order, dim, k)
    assert_near Cudann.moe_combine(expert_out, w, order, tokens, dim, k), want, 1e-6, R.abs_plus(want, 1e-6), "combine"
  end

  def test_safetensors_round_trip
    tensors = { "weight" => [Cudann::F32, [2, 3], R.rand_f32(39, 6, 1.0)],
                "steps" => [Cudann::I32, [3], [7, -1, 1 << 30]] }
    Dir.mktmpdir do |dir|
      path = File.join(dir, "ckpt.safetensors")
      Cudann::SafetensorsWriter.create do |writer|
        tensors.each { |name, (dtype, shape, data)| writer.add(name, data, shape: shape, dtype: dtype) }
        writer.save(path)
      end
      Cudann::Safetensors.open(path) do |file|
        assert_equal tensors.keys.sort, file.names.sort
        tensors.each do |name, (dtype, shape, data)|
          assert_equal [dtype, shape], file.info(name), name
          assert_equal data, file.read(name), name
        end
      end

      truncated = File.join(dir, "truncated.safetensors")
      File.binwrite(truncated, File.binread(path)[0...-1])
      assert_invalid("not a valid safetensors file") { Cudann::Safetensors.open(truncated) }
    end
  end

  def test_threads_match_serial
    inputs = Array.new(12) { |i| [R.rand_f32(100 + i, 96 * 128, 1.0), R.rand_f32(200 + i, 128 * 64, 1.0)] }
    jobs = Array.new(12) do |i|
      a, b = inputs[i]
      x = R.rand_f32(300 + i, 16 * 4097, 6.0)
      lambda do
        c = Cudann.gemm(a, b, 96, 64, 128, 1.0, 0.0)
        s = Cudann.softmax(x, 16, 4097)
        # An error on this thread reports its own message, whatever the others do.
        msg = begin
          Cudann.topk_sample([0.0] * 4, [1], 1, 4, -(i + 1), 1.0)
        rescue Cudann::Error => e
          e.message
        end
        [msg, c, s]
      end
    end
    serial = jobs.map(&:call)
    serial.each_with_index do |(msg), i|
      assert_equal "cuda_topk_sample: k must be >= 1 (got #{-(i + 1)})", msg
    end
    # The serial results are right, too (not two wrong answers agreeing).
    want, bound = R.gemm(*inputs[0], [0.0] * (96 * 64), 96, 64, 128, 1.0, 0.0)
    assert_near serial[0][1], want, 1e-5, bound, "serial gemm"
    3.times do
      assert_equal serial, jobs.map { |job| Thread.new(&job) }.map(&:value), "threads differ from serial"
    end
  end
end
