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

  def f32(x)
    [x].pack("f").unpack1("f")
  end
end
