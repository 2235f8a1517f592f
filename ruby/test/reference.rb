# frozen_string_literal: true

# Float64 references for the ABI.md formulas and the shared value checks.
module Reference
  module_function

  # n deterministic values in [-amp, amp), already rounded to float32.
  def rand_f32(seed, n, amp)
    r = Random.new(seed)
    f32s(Array.new(n) { amp * (2 * r.rand - 1) })
  end

  def f32s(values)
    values.pack("f*").unpack("f*")
  end

  # nil when |got - want| <= rtol * scale everywhere (scale defaults to |want|),
  # else a description of the first mismatch.
  def mismatch(got, want, rtol, scale = nil)
    return "length #{got.size}, want #{want.size}" unless got.size == want.size

    got.each_index do |i|
      s = scale ? scale[i] : want[i].abs
      return "[#{i}] got #{got[i]}, want #{want[i]}" unless (got[i] - want[i]).abs <= rtol * s + 1e-30
    end
    nil
  end

  def log_softmax(x, rows, cols)
    x.each_slice(cols).first(rows).flat_map do |row|
      m = row.max
      lse = m + Math.log(row.sum { |v| Math.exp(v - m) })
      row.map { |v| v - lse }
    end
  end

  def softmax(x, rows, cols)
    log_softmax(x, rows, cols).map { |v| Math.exp(v) }
  end

  def rmsnorm(x, w, dim, eps)
    x.each_slice(dim).flat_map do |row|
      inv = 1.0 / Math.sqrt(row.sum { |v| v * v } / dim + eps)
      row.each_with_index.map { |v, c| v * inv * w[c] }
    end
  end

  # [alpha A B + beta C0, error scale |alpha||A||B| + |beta||C0|]
  def gemm(a, b, c0, m, n, k, alpha, beta)
    out = Array.new(m * n)
    bound = Array.new(m * n)
    m.times do |i|
      n.times do |j|
        terms = Array.new(k) { |p| a[i * k + p] * b[p * n + j] }
        out[i * n + j] = alpha * terms.sum + beta * c0[i * n + j]
        bound[i * n + j] = alpha.abs * terms.sum(&:abs) + beta.abs * c0[i * n + j].abs
      end
    end
    [out, bound]
  end

  # [C over the whole buffer (outside the C_i: c0's values, error scale 0), error scale as gemm]
  def gemm_ex(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c0, ldc, stride_c, batch)
    gemm_parts(trans_a, trans_b, n, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c0, ldc, stride_c, batch) do
      [0...m, 0...k]
    end
  end

  # [C, error scale] as gemm_ex, group g (its matrices stride_a, stride_b, stride_c apart) covering
  # offsets[g]...offsets[g + 1] of the rows of C (only those rows written) or, inner, of k (C_g sums over them)
  def gemm_grouped(trans_a, trans_b, inner, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c0, ldc,
                   stride_c, offsets)
    gemm_parts(trans_a, trans_b, n, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c0, ldc, stride_c,
               offsets.size - 1) do |g|
      part = offsets[g]...offsets[g + 1]
      inner ? [0...m, part] : [part, 0...k]
    end
  end

  # C_g[i, j] = alpha sum over p of op(A_g)[i, p] op(B_g)[p, j] + beta C_g[i, j] for g < parts, over the rows i
  # and inner indices p of the ranges the block gives for g, A_g, B_g, C_g starting g strides in
  def gemm_parts(trans_a, trans_b, n, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c0, ldc, stride_c, parts)
    at = ->(x, start, ld, trans, r, c) { trans ? x[start + c * ld + r] : x[start + r * ld + c] }
    out = c0.dup
    bound = [0.0] * c0.size
    parts.times do |g|
      rows, inner = yield g
      rows.each do |i|
        n.times do |j|
          terms = inner.map do |p|
            at.call(a, g * stride_a, lda, trans_a, i, p) * at.call(b, g * stride_b, ldb, trans_b, p, j)
          end
          o = g * stride_c + i * ldc + j
          out[o] = alpha * terms.sum + beta * c0[o]
          bound[o] = alpha.abs * terms.sum(&:abs) + beta.abs * c0[o].abs
        end
      end
    end
    [out, bound]
  end

  def swiglu(gate, up)
    gate.zip(up).map { |g, u| g / (1 + Math.exp(-g)) * u }
  end

  # [d_gate, d_up], with silu'(x) = s (1 + x (1 - s))
  def swiglu_backward(dy, gate, up)
    gate.each_with_index.map do |x, i|
      s = 1 / (1 + Math.exp(-x))
      [dy[i] * up[i] * s * (1 + x * (1 - s)), dy[i] * x * s]
    end.transpose
  end

  # [softmax(scale Q Kᵀ, causal from position pos0) V, each row's log-sum-exp of the
  # scaled scores]: Q [batch, q_len, heads, dim], K and V [batch, kv_len, kv_heads, dim],
  # query head n reading KV head n / (heads / kv_heads), lse [batch, q_len, heads]
  def attention(q, k, v, batch, q_len, kv_len, heads, kv_heads, dim, pos0, causal, scale)
    out = []
    lse = []
    batch.times do |b|
      q_len.times do |i|
        keys = causal ? [kv_len, pos0 + i + 1].min : kv_len
        heads.times do |n|
          row = ((b * q_len + i) * heads + n) * dim
          kv = Array.new(keys) { |j| ((b * kv_len + j) * kv_heads + n / (heads / kv_heads)) * dim }
          s = kv.map { |o| scale * Array.new(dim) { |d| q[row + d] * k[o + d] }.sum }
          m = s.max
          lse << m + Math.log(s.sum { |x| Math.exp(x - m) })
          out.concat(Array.new(dim) { |d| kv.each_index.sum { |j| Math.exp(s[j] - lse.last) * v[kv[j] + d] } })
        end
      end
    end
    [out, lse]
  end

  def embedding(ids, table, dim)
    ids.flat_map { |id| id.negative? ? [0.0] * dim : table[id * dim, dim] }
  end

  # rows of dy summed per id into [vocab, dim]
  def embedding_backward(ids, dy, vocab, dim)
    d = [0.0] * (vocab * dim)
    ids.each_with_index do |id, i|
      dim.times { |c| d[id * dim + c] += dy[i * dim + c] } unless id.negative?
    end
    d
  end

  # [rows input[pair / k], order: the pairs t*k+j of indices[tokens, k] grouped by expert
  # (stable), offsets: each expert's first row and the total]
  def moe_dispatch(input, indices, dim, experts, k)
    order = indices.each_index.sort_by { |pair| [indices[pair], pair] }
    offsets = Array.new(experts + 1) { |e| indices.count { |x| x < e } }
    [order.flat_map { |pair| input[pair / k * dim, dim] }, order, offsets]
  end

  # out[t] = sum over j of w[t, j] * expert_out[row of pair t*k+j]
  def moe_combine(expert_out, w, order, dim, k)
    out = [0.0] * (w.size / k * dim)
    order.each_with_index do |pair, row|
      dim.times { |d| out[pair / k * dim + d] += w[pair] * expert_out[row * dim + d] }
    end
    out
  end

  def adamw(p, g, m, v, lr, b1, b2, eps, wd, step)
    p.each_index.map do |i|
      mi = b1 * m[i] + (1 - b1) * g[i]
      vi = b2 * v[i] + (1 - b2) * g[i] * g[i]
      mh = mi / (1 - b1**step)
      vh = vi / (1 - b2**step)
      [p[i] - lr * (mh / (Math.sqrt(vh) + eps) + wd * p[i]), mi, vi]
    end.transpose
  end

  def argmax(row)
    row.each_with_index.max_by { |v, i| [v, -i] }[1] # first maximal index
  end

  # indices by descending value, lower index first on ties
  def by_value(x)
    x.each_index.sort_by { |i| [-x[i], i] }
  end

  def nucleus(probs, top_p)
    cum = 0.0
    by_value(probs).take_while { |i| (cum += probs[i]) - probs[i] < top_p }
  end

  # sum(a * b): the loss whose gradient a backward computes
  def dot(a, b)
    a.zip(b).sum { |x, y| x * y }
  end

  # central-difference gradient of the block's value with respect to x, which the
  # block reads; x is restored
  def num_grad(x, h = 1e-6)
    x.each_index.map do |i|
      v = x[i]
      x[i] = v + h
      up = yield
      x[i] = v - h
      down = yield
      x[i] = v
      (up - down) / (2 * h)
    end
  end

  # |want| + floor: a relative error scale with an absolute floor
  def abs_plus(want, floor)
    want.map { |v| v.abs + floor }
  end

  def f32(x)
    [x].pack("f").unpack1("f")
  end
end
