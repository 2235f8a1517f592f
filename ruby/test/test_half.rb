# frozen_string_literal: true

require_relative "test_helper"

# Half precision: Cudann.convert against reference conversions written here,
# and every _ex op against the float32 op on the inputs widened with
# Cudann.convert, its result rounded with Cudann.convert (bit for bit; NaNs as
# "a quiet NaN of the same sign", the library's NaN); embedding_ex and
# kv_cache_write_ex against copies of the bits made here. F16/BF16 tensors
# are Arrays of Integers (the bits).
class CudannHalfTest < CudannTestCase
  F32, F16, BF16 = Cudann::F32, Cudann::F16, Cudann::BF16
  HALVES = [F16, BF16].freeze
  LAYOUT = { F16 => [0x7C00, 0x0200], BF16 => [0x7F80, 0x0040] }.freeze # exponent mask, quiet bit
  NEG_INF = { F16 => 0xFC00, BF16 => 0xFF80 }.freeze

  def self.nan?(type, h)
    exp, = LAYOUT.fetch(type)
    (h & exp) == exp && (h & ~(exp | 0x8000) & 0xFFFF) != 0
  end

  # binary16 -> float32 bits, exactly.
  def self.f16_to_f32_bits(h)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    return sign | 0x7F800000 | (m << 13) | (m.zero? ? 0 : 0x00400000) if e == 0x1F
    return sign | (e + 112) << 23 | m << 13 unless e.zero?
    return sign if m.zero?

    shift = 0 # a subnormal half is a normal float32
    while (m & 0x400).zero?
      m <<= 1
      shift += 1
    end
    sign | (113 - shift) << 23 | (m & 0x3FF) << 13
  end

  # float32 bits -> binary16, rounded to nearest even.
  def self.f32_bits_to_f16(b)
    sign = (b >> 16) & 0x8000
    exp = (b >> 23) & 0xFF
    mant = b & 0x7FFFFF
    return sign | 0x7C00 | (mant.zero? ? 0 : 0x0200 | mant >> 13) if exp == 0xFF

    e = exp - 112
    return sign | 0x7C00 if e >= 31

    if e <= 0
      return sign if e < -10

      m = mant | 0x800000
      shift = 14 - e
      h = m >> shift
      rem = m & ((1 << shift) - 1)
      half = 1 << (shift - 1)
      h += 1 if rem > half || (rem == half && h.odd?)
      return sign | h
    end
    h = e << 10 | mant >> 13
    rem = mant & 0x1FFF
    h += 1 if rem > 0x1000 || (rem == 0x1000 && h.odd?)
    sign | h
  end

  def self.f32_bits_to_bf16(b)
    return (b >> 16) | 0x0040 if (b & 0x7F800000) == 0x7F800000 && (b & 0x7FFFFF) != 0

    (b + 0x7FFF + ((b >> 16) & 1)) >> 16
  end

  def self.to_f32_bits(type, h)
    type == F16 ? f16_to_f32_bits(h) : h << 16
  end

  def self.from_f32_bits(type, b)
    type == F16 ? f32_bits_to_f16(b) : f32_bits_to_bf16(b)
  end

  def assert_same_halves(type, got, want, what)
    assert_equal want.size, got.size, "#{what}: length"
    _, quiet = LAYOUT.fetch(type)
    bad = want.each_index.reject do |i|
      if self.class.nan?(type, want[i])
        self.class.nan?(type, got[i]) && (got[i] & quiet) != 0 && (got[i] & 0x8000) == (want[i] & 0x8000)
      else
        got[i] == want[i]
      end
    end
    return if bad.empty?

    i = bad[0]
    flunk format("%s (type %d): %d of %d differ; first at %d: got %#06x, want %#06x", what, type, bad.size,
                 want.size, i, got[i], want[i])
  end

  # float32 values as raw bits in a MemoryPointer (NaN payloads kept).
  def f32_pointer(bits)
    FFI::MemoryPointer.new(:uint32, bits.size).tap { |p| p.put_array_of_uint32(0, bits) }
  end

  def widen(type, h)
    Cudann.convert(h, type, F32)
  end

  def round(type, f)
    Cudann.convert(f, F32, type)
  end

  # n values of about amp rounded to type, with specials sprinkled in.
  def half_data(seed, type, n, amp, specials: true)
    f = R.rand_f32(seed, n, amp)
    if specials && n >= 16
      big = type == F16 ? 60_000.0 : 1e38
      pool = [0.0, -0.0, Float::INFINITY, -Float::INFINITY, Float::NAN, 3e-6, -4e-7, 6e-8, big, -big]
      r = Random.new(seed)
      (n / 50 + 8).times { f[r.rand(n)] = pool[r.rand(pool.size)] }
    end
    round(type, f)
  end

  def any_bits(seed, n)
    r = Random.new(seed)
    Array.new(n) { r.rand(1 << 16) }
  end

  def test_convert_every_half_to_float32
    all = (0...(1 << 16)).to_a
    HALVES.each do |type|
      src = FFI::MemoryPointer.new(:uint16, all.size).tap { |p| p.put_array_of_uint16(0, all) }
      out = Cudann.convert(src, type, F32) # a MemoryPointer: the float32 bits, NaNs included
      got = out.get_array_of_uint32(0, all.size)
      bad = all.reject do |h|
        want = self.class.to_f32_bits(type, h)
        if self.class.nan?(type, h)
          (got[h] & 0x7FC00000) == 0x7FC00000 && got[h] >> 31 == want >> 31
        else
          got[h] == want
        end
      end
      assert_empty bad.first(5), "type #{type} -> F32"
      assert_same_halves type, Cudann.convert(out, F32, type).get_array_of_uint16(0, all.size), all, "round trip"
    end
    [[F16, BF16], [BF16, F16]].each do |from, to|
      want = all.map { |h| self.class.from_f32_bits(to, self.class.to_f32_bits(from, h)) }
      assert_same_halves to, Cudann.convert(all, from, to), want, "#{from} -> #{to}"
    end
  end

  def test_convert_float32_to_half
    r = Random.new(7)
    bits = Array.new(400_000) { r.rand(1 << 32) }
    # Halfway points and their neighbours: float16 midpoints (of neighbouring
    # finite values, and of 65504 and the overflow threshold), bfloat16 low halves of 0x8000.
    (0...0x7C00).each do |h|
      lo = self.class.f16_to_f32_bits(h).then { |b| [b].pack("L").unpack1("f") }
      hi = h < 0x7BFF ? [self.class.f16_to_f32_bits(h + 1)].pack("L").unpack1("f") : 65_536.0
      mid = [(lo + hi) / 2].pack("f").unpack1("L")
      bits.push(mid, mid | 0x80000000, mid + 1, mid - 1) # mid > 0: +-1 are its float32 neighbours
    end
    (0...(1 << 16)).each { |top| bits.push(top << 16 | 0x8000, top << 16 | 0x7FFF, top << 16 | 0x8001) }
    bits.push(0, 0x80000000, 0x7F800000, 0xFF800000, 0x477FE000, 0x477FF000, 0x7F7FFFFF, 1, 0x7FA01234, 0xFF800001)
    assert_operator bits.size, :>, 700_000
    ptr = f32_pointer(bits)
    HALVES.each do |type|
      got = Cudann.convert(ptr, F32, type).get_array_of_uint16(0, bits.size)
      assert_same_halves type, got, bits.map { |b| self.class.from_f32_bits(type, b) }, "F32 -> #{type}"
    end
  end

  def test_convert_arguments
    assert_equal [0x3C00, 0xC000], Cudann.convert([1.0, -2.0], F32, F16)
    assert_equal [1.0, -2.0], Cudann.convert([0x3F80, 0xC000], BF16, F32)
    out = [0, 0]
    assert_same out, Cudann.convert([0x3C00, 0x3C00], F16, F16, dst: out) # the same type copies
    assert_equal [0x3C00, 0x3C00], out
    assert_equal [0x3C00], Cudann.convert([1.0], src_type: F32, dst_type: F16)
    assert_invalid("dst has 3 elements, want 2") { Cudann.convert([1.0, 2.0], F32, F16, dst: [0, 0, 0]) }
    assert_invalid("cudann_convert") { Cudann.convert([1, 2], 9, F16) }
    assert_raises(TypeError) { Cudann.convert([1.5], F16, F32) } # halves are Integer bits
  end

  def test_add_mul_scale_ex
    HALVES.each do |type|
      [1, 33, 4097, 100_000].each do |n|
        [[half_data(1, type, n, 4.0), half_data(2, type, n, 4.0)], [any_bits(3, n), any_bits(4, n)]].each do |a, b|
          wa = widen(type, a)
          wb = widen(type, b)
          sum = round(type, Cudann.add(wa, wb))
          assert_same_halves type, Cudann.add_ex(a, b, type), sum, "add_ex n=#{n}"
          assert_same_halves type, Cudann.mul_ex(a, b, type), round(type, Cudann.mul(wa, wb)), "mul_ex n=#{n}"
          [-0.3, 1e-3, 300.0].each do |f|
            want = round(type, Cudann.scale(wa, f))
            assert_same_halves type, Cudann.scale_ex(a, f, type), want, "scale_ex #{f} n=#{n}"
          end
          out = b.dup
          assert_same out, Cudann.add_ex(a, out, type, out: out) # in place
          assert_same_halves type, out, sum, "add_ex in place"
        end
      end
    end
    assert_equal [3.0], Cudann.add_ex([1.0], [2.0], F32) # F32: the original op
    assert_invalid("b has 2 elements, want 3") { Cudann.add_ex([1, 2, 3], [1, 2], F16) }
    assert_invalid("cudann_add_ex") { Cudann.add_ex([1], [2], 7) }
    assert_raises(TypeError) { Cudann.mul_ex([1.0], [2.0], BF16) }
  end

  def test_softmax_rmsnorm_ex
    HALVES.each do |type|
      [[1, 1], [3, 33], [4, 4097], [2, 70_000]].each do |rows, cols|
        x = half_data(10, type, rows * cols, 4.0, specials: false)
        (0...cols).step(3) { |j| x[j] = NEG_INF[type] }
        x[(rows - 1) * cols, cols] = [NEG_INF[type]] * cols if rows > 1 # a fully masked row
        want = round(type, Cudann.softmax(widen(type, x), rows, cols))
        assert_same_halves type, Cudann.softmax_ex(x, rows, cols, type), want, "softmax_ex #{[rows, cols]}"
        Cudann.softmax_ex(x, rows, cols, type, out: x)
        assert_same_halves type, x, want, "softmax_ex in place"

        y = half_data(11, type, rows * cols, 4.0, specials: false)
        w = half_data(12, type, cols, 1.0, specials: false)
        [1e-5, 0.0, 1.0].each do |eps|
          want = round(type, Cudann.rmsnorm(widen(type, y), widen(type, w), rows, cols, eps))
          got = Cudann.rmsnorm_ex(y, w, rows, cols, eps, type)
          assert_same_halves type, got, want, "rmsnorm_ex #{[rows, cols]} eps #{eps}"
        end
      end
    end
    assert_invalid("weight has 2 elements, want 3") { Cudann.rmsnorm_ex([0] * 6, [0] * 2, 2, 3, 1e-5, F16) }
  end

  def test_decoding_ex
    HALVES.each do |type|
      [[200, 33], [64, 4097], [3, 70_000]].each do |rows, vocab|
        x = half_data(20, type, rows * vocab, 3.0, specials: false)
        (1...vocab).step(2) { |j| x[j] = NEG_INF[type] }
        x[2 * vocab, vocab] = [x[2 * vocab]] * vocab if rows > 2 # all tied
        wx = widen(type, x)
        seeds = Array.new(rows) { |i| (i * 0x9E3779B97F4A7C15 ^ 99) & 0xFFFFFFFFFFFFFFFF }
        assert_equal Cudann.argmax(wx, rows, vocab), Cudann.argmax_ex(x, rows, vocab, type), "argmax_ex"
        [0.0, 0.7, 1.0, 2.5].each do |t|
          assert_equal Cudann.sample(wx, seeds, rows, vocab, t), Cudann.sample_ex(x, seeds, rows, vocab, t, type),
                       "sample_ex #{type} #{[rows, vocab]} T=#{t}"
          [1, 50].each do |k|
            assert_equal Cudann.topk_sample(wx, seeds, rows, vocab, k, t),
                         Cudann.topk_sample_ex(x, seeds, rows, vocab, k, t, type), "topk_sample_ex k=#{k} T=#{t}"
          end
          [0.5, 0.95].each do |p|
            assert_equal Cudann.topp_sample(wx, seeds, rows, vocab, p, t),
                         Cudann.topp_sample_ex(x, seeds, rows, vocab, p, t, type), "topp_sample_ex p=#{p} T=#{t}"
          end
        end
      end
    end
  end

  def test_swiglu_ex
    HALVES.each do |type|
      [1, 33, 4097, 100_000].each do |n|
        [[half_data(40, type, n, 4.0), half_data(41, type, n, 4.0)], [any_bits(42, n), any_bits(43, n)]].each do |g, u|
          want = round(type, Cudann.swiglu(widen(type, g), widen(type, u)))
          assert_same_halves type, Cudann.swiglu_ex(g, u, type), want, "swiglu_ex n=#{n}"
          assert_same g, Cudann.swiglu_ex(g, u, type, out: g) # in place
          assert_same_halves type, g, want, "swiglu_ex in place"
        end
      end
    end
    assert_invalid("up has 2 elements, want 3") { Cudann.swiglu_ex([0] * 3, [0] * 2, F16) }
    assert_invalid("cudann_swiglu") { Cudann.swiglu_ex([0], [0], 7) }
    assert_raises(TypeError) { Cudann.swiglu_ex([1.0], [2.0], BF16) }
  end

  def test_embedding_ex_copies_rows
    vocab, dim = 50, 33
    r = Random.new(44)
    ids = Array.new(300) { r.rand(vocab + 2) - 2 } # some padding (negative) ids
    HALVES.each do |type|
      table = any_bits(45, vocab * dim) # NaN payloads too: copied, not converted
      want = ids.flat_map { |id| id.negative? ? [0] * dim : table[id * dim, dim] } # padding: +0
      assert_equal want, Cudann.embedding_ex(ids, table, ids.size, vocab, dim, type), "embedding_ex #{type}"
    end
    assert_invalid("table has 3 elements, want 4") { Cudann.embedding_ex([0], [0] * 3, 1, 2, 2, F16) }
    assert_invalid("cudann_embedding") { Cudann.embedding_ex([0], [0] * 4, 1, 2, 2, 7) }
  end

  def test_kv_cache_write_ex_copies
    batch, max_seq, heads, dim = 2, 12, 3, 16
    row = heads * dim
    HALVES.each do |type|
      [[0, 1], [5, 3], [0, 12]].each do |pos, new_len|
        k_new, v_new = [47, 48].map { |seed| any_bits(seed, batch * new_len * row) }
        k_cache, v_cache = [49, 50].map { |seed| any_bits(seed, batch * max_seq * row) }
        want_k, want_v = [[k_cache, k_new], [v_cache, v_new]].map { |c, new| written(c, new, batch, pos, max_seq, row) }
        Cudann.kv_cache_write_ex(k_new, v_new, k_cache, v_cache, batch, new_len, max_seq, heads, dim, pos, type)
        assert_equal want_k, k_cache, "kv_cache_write_ex k #{type} #{[pos, new_len]}"
        assert_equal want_v, v_cache, "kv_cache_write_ex v #{type} #{[pos, new_len]}"
      end
    end
    assert_invalid("must be <= max_seq") do
      Cudann.kv_cache_write_ex([0] * 2, [0] * 2, [0] * 2, [0] * 2, 1, 1, 1, 1, 2, 1, F16)
    end
  end

  # cache [batch, max_seq, row] with new [batch, new_len, row] copied in at position pos.
  def written(cache, new, batch, pos, max_seq, row)
    n = new.size / batch # the new elements of one batch entry
    cache.dup.tap { |w| batch.times { |b| w[(b * max_seq + pos) * row, n] = new[b * n, n] } }
  end

  # batch, q_len, kv_len, kv_capacity, n_heads, n_kv_heads, head_dim, pos0, causal, masked: training (GQA), one
  # decoding step against a KV cache (MQA), several 64-query blocks with a mask, not causal with a fully masked row.
  ATTENTION = [[2, 5, 5, 5, 4, 2, 8, 0, true, false], [3, 1, 7, 12, 6, 1, 16, 6, true, false],
               [1, 70, 70, 70, 2, 2, 32, 0, true, true], [2, 3, 90, 100, 4, 4, 64, 87, false, true]].freeze

  def test_attention_forward_ex
    HALVES.each do |type|
      ATTENTION.each do |b, ql, kv, cap, h, g, d, pos0, causal, masked|
        shape = { batch: b, q_len: ql, kv_len: kv, kv_capacity: cap, n_heads: h, n_kv_heads: g, head_dim: d,
                  pos0: pos0, is_causal: causal, scale: 1 / Math.sqrt(d) }
        q = half_data(51, type, b * ql * h * d, 1.0, specials: false)
        k, v = [52, 53].map do |seed|
          unread(type, half_data(seed, type, b * cap * g * d, 1.0, specials: false), kv, cap, g * d)
        end
        mask = masked ? attention_mask(ql, kv) : nil
        want, want_lse = Cudann.attention_forward(widen(type, q), widen(type, k), widen(type, v), mask: mask, **shape)
        out, lse = Cudann.attention_forward_ex(q, k, v, dtype: type, mask: mask, **shape)
        assert_same_halves type, out, round(type, want), "attention_forward_ex #{shape}"
        assert_equal f32_bits(want_lse), f32_bits(lse), "attention_forward_ex lse #{shape}" # the float32 op's
      end
    end
    assert_invalid("mask has 2 elements, want 1") do
      Cudann.attention_forward_ex([0] * 2, [0] * 2, [0] * 2, 1, 1, 1, 1, 1, 1, 2, 0, true, 1.0, F16, mask: [0.0] * 2)
    end
  end

  # k or v ([batch, capacity, row]) with NaNs at every position past kv_len: the op must not read them.
  def unread(type, x, kv_len, capacity, row)
    nan = round(type, [Float::NAN])[0]
    x.each_slice(row).with_index.flat_map { |r, pos| pos % capacity < kv_len ? r : [nan] * row }
  end

  # A random additive mask whose last row hides every key (zeros, lse -inf).
  def attention_mask(q_len, kv_len)
    R.rand_f32(54, q_len * kv_len, 1.0).tap { |m| m[(q_len - 1) * kv_len, kv_len] = [-Float::INFINITY] * kv_len }
  end

  def f32_bits(values)
    values.pack("e*").unpack("L<*")
  end

  def test_rope_qk_ex
    HALVES.each do |type|
      [[1, 1, 1, 1, 2, 0], [2, 5, 4, 2, 16, 3], [2, 300, 8, 2, 64, 40]].each do |b, s, hq, hk, d, offset|
        dims = [b, s, hq, hk, d, offset]
        freqs = Cudann.rope_freqs(s + offset, d, 10_000.0, 1.0)
        q = half_data(55, type, b * s * hq * d, 4.0)
        k = half_data(56, type, b * s * hk * d, 4.0)
        want_q, want_k = Cudann.rope_qk(widen(type, q), widen(type, k), freqs, *dims).map { |x| round(type, x) }
        got_q, got_k = Cudann.rope_qk_ex(q, k, freqs, *dims, type)
        assert_same_halves type, got_q, want_q, "rope_qk_ex q #{dims}"
        assert_same_halves type, got_k, want_k, "rope_qk_ex k #{dims}"
        Cudann.rope_qk_ex(q, k, freqs, *dims, type, q_out: q, k_out: k) # in place
        assert_same_halves type, q, want_q, "rope_qk_ex q in place"
        assert_same_halves type, k, want_k, "rope_qk_ex k in place"
      end
    end
    assert_invalid("freqs has 1 elements, want at least 2") do
      Cudann.rope_qk_ex([0] * 4, [0] * 4, [0.0], 1, 2, 1, 1, 2, 0, F16)
    end
    assert_invalid("cudann_rope_qk_ex") { Cudann.rope_qk_ex([0] * 4, [0] * 4, [0.0] * 2, 1, 2, 1, 1, 2, 0, 7) }
    assert_raises(TypeError) { Cudann.rope_qk_ex([0.5] * 4, [0] * 4, [0.0] * 2, 1, 2, 1, 1, 2, 0, F16) }
  end

  def test_gemm_ex_half
    # C = 0.75 A Bᵀ - 0.5 C with half operands, accumulated in float32: within
    # float32 GEMM error plus half an ulp of the half C.
    HALVES.each do |type|
      [[1, 64, 256], [3, 33, 100], [64, 31, 17]].each do |m, n, k|
        a = half_data(30, type, m * k, 1.0, specials: false)
        b = half_data(31, type, n * k, 1.0, specials: false)
        c = half_data(32, type, m * n, 1.0, specials: false)
        want, bound = R.gemm_ex(false, true, m, n, k, 0.75, widen(type, a), k, 0, widen(type, b), k, 0, -0.5,
                                widen(type, c), n, 0, 1)
        assert_same c, Cudann.gemm_ex(a, b, c, m: m, n: n, k: k, trans_b: true, alpha: 0.75, beta: -0.5,
                                               a_type: type, b_type: type, c_type: type)
        rtol = 1e-5 + 1.01 / (type == F16 ? 2048 : 256)
        assert_near widen(type, c), want, rtol, bound, "gemm_ex #{type} #{[m, n, k]}"
      end
    end
    # Float32 activations against bfloat16 weights (decoding's x·Wᵀ).
    m, n, k = 2, 48, 300
    x = R.rand_f32(33, m * k, 1.0)
    w = half_data(34, BF16, n * k, 1.0, specials: false)
    want, bound = R.gemm_ex(false, true, m, n, k, 1.0, x, k, 0, widen(BF16, w), k, 0, 0.0, [0.0] * (m * n), n, 0, 1)
    y = [0.0] * (m * n)
    Cudann.gemm_ex(x, w, y, m: m, n: n, k: k, trans_b: true, b_type: BF16)
    assert_near y, want, 1e-5, bound, "gemm_ex F32 x BF16"
    assert_invalid("b has 4 elements, want at least 5") do
      Cudann.gemm_ex([0.0] * 5, [0] * 4, [0.0], m: 1, n: 1, k: 5, b_type: F16)
    end
  end
end
