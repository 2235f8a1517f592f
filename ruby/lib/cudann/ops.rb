# frozen_string_literal: true

module Cudann
  # One argument of an op, in the C order. kind: :in (tensor, positional),
  # :inout (tensor, positional, written in place), :opt (optional input,
  # keyword), :out (output, keyword, created when absent), :scratch (keyword,
  # created when absent, not returned), :int / :int64 / :float / :bool
  # (scalars, positional or keyword), :dtype (always F32 here), :dt (a data-type
  # scalar, positional or keyword, which types the tensors declared t(name)), :stream.
  Param = Struct.new(:kind, :name, :type, :want, :expr, :at_least, :infer)

  SCALARS = %i[int int64 float bool dt].freeze
  TENSOR_MARKS = { ":" => :in, "!" => :inout, "?" => :opt, ">" => :out, "~" => :scratch }.freeze

  class << self
    private

    # Ops are declared by a spec string, one token per C argument:
    #   name:f32[expr]   input       name!f32[expr]  in place
    #   name?f32[expr]   optional    name>f32[expr]  output   name~f32[expr] scratch
    #   [>=expr]         at least that many elements (tables, scratch)
    #   name             int         name:float / name:bool / name:int64
    #   name:int64=x     the element count of tensor x
    #   name:dtype       a data type (F32, F16, BF16); tensors typed t(name)
    #                    are float32 for F32, else uint16 bits (name:t(dtype)[n])
    #   dtype, stream
    def parse_spec(spec)
      spec.split.map do |token|
        case token
        when "stream", "dtype" then Param.new(token.to_sym)
        when /\A(\w+)([:!?>~])(f32|i32|u64|t\(\w+\))\[(>=)?(.+)\]\z/
          name, mark, type, at_least, expr = Regexp.last_match.captures
          body = expr.gsub(/[a-z_]\w*/) { |n| "s.fetch(:#{n})" }
          Param.new(TENSOR_MARKS.fetch(mark), name.to_sym, type.to_sym,
                    eval("->(s) { #{body} }"), # rubocop:disable Security/Eval
                    [expr, expr.scan(/[a-z_]\w*/).uniq.map(&:to_sym)], !at_least.nil?)
        when /\A(\w+):dtype\z/ then Param.new(:dt, Regexp.last_match(1).to_sym)
        when /\A(\w+):(int64|float|bool)(?:=(\w+))?\z/
          Param.new(Regexp.last_match(2).to_sym, Regexp.last_match(1).to_sym, nil, nil, nil, false,
                    Regexp.last_match(3)&.to_sym)
        when /\A\w+\z/ then Param.new(:int, token.to_sym)
        else raise ArgumentError, "bad op spec token #{token}"
        end
      end
    end

    # Defines Cudann.name over the C function cfunc.
    def op(name, cfunc, spec, check: nil)
      params = parse_spec(spec)
      fn = "Cudann.#{name}"
      define_singleton_method(name) { |*args, **kw| run_op(fn, cfunc, params, args, kw, check) }
    end

    def run_op(fn, cfunc, params, args, kw, check)
      args = args.dup
      kw = kw.dup
      stream = kw.delete(:stream)
      tensors = {}
      params.each do |p|
        next unless %i[in inout].include?(p.kind)
        raise ArgumentError, "#{fn}: missing tensor #{p.name}" if args.empty?

        tensors[p.name] = args.shift
      end
      sizes, params = scalars(fn, params, tensors, args, kw)
      raise ArgumentError, "#{fn}: #{args.size} argument(s) too many" unless args.empty?

      params.each { |p| tensors[p.name] = kw.delete(p.name) if %i[opt out scratch].include?(p.kind) }
      raise ArgumentError, "#{fn}: unknown keyword(s) #{kw.keys.join(', ')}" unless kw.empty?

      counts = check_tensors(fn, params, tensors, sizes)
      check&.call(fn, sizes, tensors, counts)
      primary = params.find { |p| %i[in inout].include?(p.kind) }&.then { |p| tensors[p.name] }
      created = {}
      params.each do |p|
        next unless %i[out scratch].include?(p.kind) && tensors[p.name].nil?

        tensors[p.name] = created[p.name] = Tensor.new_like(primary, p.type, counts[p.name])
      end
      invoke(fn, cfunc, params, tensors, counts, sizes, stream, created)
    end

    # The scalar arguments: keywords, else positional in the C order, else
    # inferred from a tensor's length; sizes used in shapes must be >= 0.
    # Returns the sizes and the params with their t(dtype) tensors typed.
    def scalars(fn, params, tensors, args, kw)
      sizes = {}
      params.each do |p|
        next unless SCALARS.include?(p.kind) && !p.infer

        sizes[p.name] =
          if kw.key?(p.name) then kw.delete(p.name)
          elsif !args.empty? then args.shift
          else raise ArgumentError, "#{fn}: missing #{p.name}"
          end
      end
      params = typed(fn, params, sizes)
      params.each do |p|
        next unless p.infer

        src = params.find { |q| q.name == p.infer }
        sizes[p.name] = Tensor.count(fn, p.infer, tensors[p.infer], src.type)
      end
      used = params.select(&:expr).flat_map { |p| p.expr[1] }.uniq
      used.each do |name|
        v = sizes[name]
        Cudann.invalid("#{fn}: #{name} must be an Integer >= 0 (got #{v.inspect})") unless v.is_a?(Integer) && v >= 0
      end
      [sizes, params]
    end

    # Tensors declared t(name): float32 (Floats) when the data type `name` is
    # F32, else uint16 (the bits of each F16 / BF16 value; an unknown type is
    # the library's to refuse).
    def typed(fn, params, sizes)
      params.map do |p|
        m = p.type.to_s.match(/\At\((\w+)\)\z/)
        next p unless m

        dt = sizes.fetch(m[1].to_sym)
        raise TypeError, "#{fn}: #{m[1]} must be an Integer data type (got #{dt.inspect})" unless dt.is_a?(Integer)

        p.dup.tap { |q| q.type = dt == F32 ? :f32 : :u16 }
      end
    end

    # Element counts of every tensor; refuses a given tensor of the wrong length.
    def check_tensors(fn, params, tensors, sizes)
      counts = {}
      params.each do |p|
        next unless p.want

        want = p.want.call(sizes)
        value = tensors[p.name]
        counts[p.name] = want
        next if value.nil? && %i[opt out scratch].include?(p.kind)

        have = Tensor.count(fn, p.name, value, p.type)
        counts[p.name] = have
        if p.at_least
          next if have >= want

          Cudann.invalid("#{fn}: #{p.name} has #{have} elements, want at least #{want} (#{p.expr[0]})")
        elsif have != want
          Cudann.invalid("#{fn}: #{p.name} has #{have} elements, want #{want} (#{p.expr[0]})")
        end
      end
      counts
    end

    def invoke(fn, cfunc, params, tensors, counts, sizes, stream, created)
      writebacks = []
      c_args = params.map do |p|
        case p.kind
        when :in, :inout, :opt, :out, :scratch
          ptr, back = Tensor.pointer(tensors[p.name], p.type, counts[p.name])
          writebacks << back if back && %i[inout out].include?(p.kind)
          ptr
        when :int, :int64, :dt then Integer(sizes[p.name])
        when :float then Float(sizes[p.name])
        when :bool then sizes[p.name] ? 1 : 0
        when :dtype then F32
        when :stream then Cudann.stream_pointer(fn, stream)
        end
      end
      begin
        check(Native.public_send(cfunc, *c_args))
      rescue Error
        created.each_value { |m| m.free if m.is_a?(Memory) }
        raise
      end
      writebacks.each(&:call)
      results(params, tensors)
    end

    # The outputs (one, or an Array of them); ops without outputs return their
    # in-place tensors.
    def results(params, tensors)
      outs = params.select { |p| p.kind == :out }
      outs = params.select { |p| p.kind == :inout } if outs.empty?
      values = outs.map { |p| tensors[p.name] }
      values.size == 1 ? values[0] : values
    end
  end

  # Elementwise (the length comes from the first tensor).
  op :silu, :cuda_silu, "input:f32[n] out>f32[n] n:int64=input stream"
  op :silu_backward, :cudann_silu_backward, "d_output:f32[n] input:f32[n] d_input>f32[n] n:int64=d_output stream"
  op :gelu, :cudann_gelu, "input:f32[n] out>f32[n] n:int64=input stream"
  op :gelu_backward, :cudann_gelu_backward, "d_output:f32[n] input:f32[n] d_input>f32[n] n:int64=d_output stream"
  op :add, :cuda_add, "a:f32[n] b:f32[n] out>f32[n] n:int64=a stream"
  op :mul, :cuda_mul, "a:f32[n] b:f32[n] out>f32[n] n:int64=a stream"
  op :scale, :cuda_scale, "input:f32[n] out>f32[n] scale:float n:int64=input stream"
  op :swiglu, :cudann_swiglu, "gate:f32[n] up:f32[n] out>f32[n] n:int64=gate dtype stream"
  op :swiglu_backward, :cudann_swiglu_backward,
     "d_output:f32[n] gate:f32[n] up:f32[n] d_gate>f32[n] d_up>f32[n] n:int64=d_output stream"
  op :zero_grad, :cuda_zero_grad, "grad!f32[size] size:int64=grad stream"
  op :adamw_step, :cuda_adamw_step,
     "param!f32[size] grad:f32[size] m!f32[size] v!f32[size] lr:float beta1:float beta2:float eps:float " \
     "weight_decay:float step size:int64=param stream"
  op :grad_clip, :cuda_grad_clip,
     "grad!f32[size] partial_norms~f32[>=(size+255)/256] total_norm>f32[1] clip_norm:float size:int64=grad stream"

  # Rows.
  op :softmax, :cuda_softmax, "input:f32[rows*cols] out>f32[rows*cols] rows cols stream"
  op :softmax_backward, :cudann_softmax_backward,
     "d_output:f32[rows*cols] output:f32[rows*cols] d_input>f32[rows*cols] rows cols stream"
  op :softmax_topk, :cuda_softmax_topk,
     "input:f32[rows*cols] weights>f32[rows*k] indices>i32[rows*k] rows cols k stream"
  op :rmsnorm, :cuda_rmsnorm,
     "input:f32[rows*hidden_dim] weight:f32[hidden_dim] out>f32[rows*hidden_dim] rows hidden_dim eps:float stream"
  op :rmsnorm_residual, :cuda_rmsnorm_residual,
     "input:f32[rows*hidden_dim] residual:f32[rows*hidden_dim] weight:f32[hidden_dim] out>f32[rows*hidden_dim] " \
     "residual_out>f32[rows*hidden_dim] rows hidden_dim eps:float stream"
  op :rmsnorm_backward, :cudann_rmsnorm_backward,
     "d_output:f32[rows*hidden_dim] input:f32[rows*hidden_dim] weight:f32[hidden_dim] " \
     "d_input>f32[rows*hidden_dim] d_weight>f32[hidden_dim] rows hidden_dim eps:float stream"
  op :layernorm, :cudann_layernorm,
     "input:f32[rows*hidden_dim] weight:f32[hidden_dim] bias:f32[hidden_dim] out>f32[rows*hidden_dim] " \
     "rows hidden_dim eps:float stream"
  op :layernorm_backward, :cudann_layernorm_backward,
     "d_output:f32[rows*hidden_dim] input:f32[rows*hidden_dim] weight:f32[hidden_dim] " \
     "d_input>f32[rows*hidden_dim] d_weight>f32[hidden_dim] d_bias>f32[hidden_dim] rows hidden_dim eps:float stream"
  op :bias_add, :cudann_bias_add, "input:f32[rows*cols] bias:f32[cols] out>f32[rows*cols] rows cols stream"
  op :bias_backward, :cudann_bias_backward, "d_output:f32[rows*cols] d_bias>f32[cols] rows cols stream"

  # GEMM (c is an output: created when absent, read when beta != 0).
  op :gemm, :cuda_gemm, "a:f32[m*k] b:f32[k*n] c>f32[m*n] m n k alpha:float beta:float stream"
  op :gemm_batched, :cuda_gemm_batched,
     "a:f32[batch*m*k] b:f32[batch*k*n] c>f32[batch*m*n] batch m n k alpha:float beta:float stream"

  # Losses.
  op :cross_entropy_forward, :cuda_cross_entropy_forward,
     "logits:f32[batch_seq*vocab_size] targets:i32[batch_seq] loss>f32[1] log_probs>f32[batch_seq*vocab_size] " \
     "batch_seq vocab_size stream"
  op :cross_entropy_backward, :cuda_cross_entropy_backward,
     "log_probs:f32[batch_seq*vocab_size] targets:i32[batch_seq] d_logits>f32[batch_seq*vocab_size] " \
     "batch_seq vocab_size scale:float stream"
  op :aux_loss_forward, :cuda_aux_loss_forward,
     "router_probs:f32[batch_seq*n_experts] expert_indices:i32[batch_seq*top_k] aux_loss>f32[1] " \
     "f_counts>f32[n_experts] p_means>f32[n_experts] batch_seq n_experts top_k alpha:float stream"
  op :aux_loss_backward, :cudann_aux_loss_backward,
     "f_counts:f32[n_experts] d_probs>f32[tokens*n_experts] tokens n_experts alpha:float scale:float stream"

  # Decoding.
  op :argmax, :cuda_argmax, "logits:f32[batch*vocab_size] out>i32[batch] batch vocab_size stream"
  op :sample, :cuda_sample,
     "logits:f32[batch*vocab_size] out>i32[batch] seeds:u64[batch] batch vocab_size temperature:float stream"
  op :topk_sample, :cuda_topk_sample,
     "logits:f32[batch*vocab_size] out>i32[batch] seeds:u64[batch] batch vocab_size k temperature:float stream"
  op :topp_sample, :cuda_topp_sample,
     "logits:f32[batch*vocab_size] out>i32[batch] seeds:u64[batch] batch vocab_size top_p:float " \
     "temperature:float stream"

  # Embeddings.
  op :embedding, :cudann_embedding,
     "ids:i32[n_ids] table:f32[vocab_size*dim] out>f32[n_ids*dim] n_ids vocab_size dim dtype stream"
  op :embedding_backward, :cudann_embedding_backward,
     "ids:i32[n_ids] d_output:f32[n_ids*dim] d_table>f32[vocab_size*dim] n_ids vocab_size dim stream"
  # grad_weight must hold max(indices) + 1 rows: checked here for Array indices.
  op :scatter_add, :cuda_scatter_add,
     "grad_output:f32[num_indices*embedding_dim] indices:i32[num_indices] grad_weight!f32[>=embedding_dim] " \
     "num_indices embedding_dim stream",
     check: lambda { |fn, sizes, tensors, counts|
       ids = tensors[:indices]
       dim = sizes[:embedding_dim]
       rows = dim.zero? ? 0 : counts[:grad_weight] / dim
       bad = ids.is_a?(Array) && ids.find { |i| i >= rows }
       Cudann.invalid("#{fn}: index #{bad} is outside grad_weight's #{rows} rows") if bad
     }

  # Mixture of experts.
  op :moe_router_backward, :cudann_moe_router_backward,
     "weights:f32[tokens*k] indices:i32[tokens*k] d_weights:f32[tokens*k] d_logits>f32[tokens*n_experts] " \
     "tokens n_experts k stream"
  op :moe_dispatch, :cudann_moe_dispatch,
     "input:f32[tokens*dim] indices:i32[tokens*k] out>f32[tokens*k*dim] order>i32[tokens*k] " \
     "offsets>i32[n_experts+1] tokens dim n_experts k stream"
  op :moe_dispatch_backward, :cudann_moe_dispatch_backward,
     "d_output:f32[tokens*k*dim] order:i32[tokens*k] d_input>f32[tokens*dim] tokens dim k stream"
  op :moe_combine, :cudann_moe_combine,
     "expert_output:f32[tokens*k*dim] weights:f32[tokens*k] order:i32[tokens*k] out>f32[tokens*dim] " \
     "tokens dim k stream"
  op :moe_combine_backward, :cudann_moe_combine_backward,
     "d_output:f32[tokens*dim] expert_output:f32[tokens*k*dim] weights:f32[tokens*k] order:i32[tokens*k] " \
     "d_expert_output>f32[tokens*k*dim] d_weights>f32[tokens*k] tokens dim k stream"

  # RoPE (tables of rotation angles, rows of head_dim/2; they may be longer).
  op :rope_freqs, :cuda_rope_freqs,
     "freqs>f32[max_seq_len*(head_dim/2)] max_seq_len head_dim base:float alpha:float stream"
  op :rope_forward, :cuda_rope_forward,
     "input:f32[batch*seq_len*n_heads*head_dim] freqs:f32[>=(seq_len+offset)*(head_dim/2)] " \
     "out>f32[batch*seq_len*n_heads*head_dim] batch seq_len n_heads head_dim offset stream"
  op :rope_qk, :cuda_rope_qk,
     "q:f32[batch*seq_len*n_q_heads*head_dim] k:f32[batch*seq_len*n_kv_heads*head_dim] " \
     "freqs:f32[>=(seq_len+offset)*(head_dim/2)] q_out>f32[batch*seq_len*n_q_heads*head_dim] " \
     "k_out>f32[batch*seq_len*n_kv_heads*head_dim] batch seq_len n_q_heads n_kv_heads head_dim offset stream"
  op :rope_backward, :cudann_rope_backward,
     "d_q:f32[batch*seq_len*n_q_heads*head_dim] d_k:f32[batch*seq_len*n_kv_heads*head_dim] " \
     "freqs:f32[>=(seq_len+offset)*(head_dim/2)] d_q_out>f32[batch*seq_len*n_q_heads*head_dim] " \
     "d_k_out>f32[batch*seq_len*n_kv_heads*head_dim] batch seq_len n_q_heads n_kv_heads head_dim offset stream"
  op :rope, :cuda_rope,
     "q!f32[batch*seq_len*n_heads*head_dim] k!f32[batch*seq_len*n_heads*head_dim] " \
     "freqs:f32[>=seq_len*(head_dim/2)] batch seq_len n_heads head_dim stream"
  op :rope_ntk, :cuda_rope_ntk,
     "q!f32[batch*seq_len*n_heads*head_dim] k!f32[batch*seq_len*n_heads*head_dim] " \
     "freqs:f32[>=seq_len*(head_dim/2)] batch seq_len n_heads head_dim alpha:float orig_len stream"

  # Attention.
  op :attention_scores, :cuda_attention_scores,
     "q:f32[batch*seq_len*n_heads*head_dim] k:f32[batch*seq_len*head_dim] " \
     "scores>f32[batch*n_heads*seq_len*seq_len] batch n_heads seq_len head_dim scale:float stream"
  op :attention_output, :cuda_attention_output,
     "weights:f32[batch*n_heads*seq_len*seq_len] v:f32[batch*seq_len*head_dim] " \
     "out>f32[batch*seq_len*n_heads*head_dim] batch n_heads seq_len head_dim stream"
  op :flash_attention, :cuda_flash_attention,
     "q:f32[batch*seq_len*n_heads*head_dim] k:f32[batch*seq_len*n_heads*head_dim] " \
     "v:f32[batch*seq_len*n_heads*head_dim] out>f32[batch*seq_len*n_heads*head_dim] " \
     "batch seq_len n_heads head_dim scale:float is_causal:bool stream"
  op :mqa_attention, :cuda_mqa_attention,
     "q:f32[batch*seq_len*n_heads*head_dim] k:f32[batch*seq_len*head_dim] v:f32[batch*seq_len*head_dim] " \
     "out>f32[batch*seq_len*n_heads*head_dim] mask?f32[seq_len*seq_len] batch seq_len n_heads head_dim " \
     "scale:float stream"
  # Returns [out, lse]; kv_capacity is the KV tensors' length (kv_len for plain tensors).
  op :attention_forward, :cudann_attention_forward,
     "q:f32[batch*q_len*n_heads*head_dim] k:f32[batch*kv_capacity*n_kv_heads*head_dim] " \
     "v:f32[batch*kv_capacity*n_kv_heads*head_dim] mask?f32[q_len*kv_len] out>f32[batch*q_len*n_heads*head_dim] " \
     "lse>f32[batch*q_len*n_heads] batch q_len kv_len kv_capacity n_heads n_kv_heads head_dim pos0 " \
     "is_causal:bool scale:float dtype stream"
  op :attention_backward, :cudann_attention_backward,
     "d_output:f32[batch*q_len*n_heads*head_dim] q:f32[batch*q_len*n_heads*head_dim] " \
     "k:f32[batch*kv_len*n_kv_heads*head_dim] v:f32[batch*kv_len*n_kv_heads*head_dim] mask?f32[q_len*kv_len] " \
     "output:f32[batch*q_len*n_heads*head_dim] lse:f32[batch*q_len*n_heads] " \
     "d_q>f32[batch*q_len*n_heads*head_dim] d_k>f32[batch*kv_len*n_kv_heads*head_dim] " \
     "d_v>f32[batch*kv_len*n_kv_heads*head_dim] batch q_len kv_len n_heads n_kv_heads head_dim pos0 " \
     "is_causal:bool scale:float stream"
  op :kv_cache_write, :cudann_kv_cache_write,
     "k_new:f32[batch*new_len*n_kv_heads*head_dim] v_new:f32[batch*new_len*n_kv_heads*head_dim] " \
     "k_cache!f32[batch*max_seq*n_kv_heads*head_dim] v_cache!f32[batch*max_seq*n_kv_heads*head_dim] " \
     "batch new_len max_seq n_kv_heads head_dim pos dtype stream"

  # Half precision: tensors of data type dtype (F32, F16, BF16), Floats for
  # F32 and Integers (the uint16 bits of each value) for F16 and BF16. Half
  # tensors are read, computed in float32 and written in the same type: each
  # result is exactly the float32 op on the widened inputs, rounded once; the
  # samplers pick the float32 sampler's tokens. On the CPU (host memory) so far.
  #
  # Cudann.convert(src, src_type, dst_type): to a half type rounded to nearest
  # even (overflow to infinity, NaN a quiet NaN of its sign); half to F32 exact.
  op :convert, :cudann_convert, "src:t(src_type)[n] src_type:dtype dst>t(dst_type)[n] dst_type:dtype n:int64=src stream"
  op :add_ex, :cudann_add_ex, "a:t(dtype)[n] b:t(dtype)[n] out>t(dtype)[n] n:int64=a dtype:dtype stream"
  op :mul_ex, :cudann_mul_ex, "a:t(dtype)[n] b:t(dtype)[n] out>t(dtype)[n] n:int64=a dtype:dtype stream"
  op :scale_ex, :cudann_scale_ex, "input:t(dtype)[n] out>t(dtype)[n] scale:float n:int64=input dtype:dtype stream"
  op :softmax_ex, :cudann_softmax_ex,
     "input:t(dtype)[rows*cols] out>t(dtype)[rows*cols] rows cols dtype:dtype stream"
  op :rmsnorm_ex, :cudann_rmsnorm_ex,
     "input:t(dtype)[rows*hidden_dim] weight:t(dtype)[hidden_dim] out>t(dtype)[rows*hidden_dim] rows hidden_dim " \
     "eps:float dtype:dtype stream"
  op :argmax_ex, :cudann_argmax_ex,
     "logits:t(dtype)[batch*vocab_size] out>i32[batch] batch vocab_size dtype:dtype stream"
  op :sample_ex, :cudann_sample_ex,
     "logits:t(dtype)[batch*vocab_size] out>i32[batch] seeds:u64[batch] batch vocab_size temperature:float " \
     "dtype:dtype stream"
  op :topk_sample_ex, :cudann_topk_sample_ex,
     "logits:t(dtype)[batch*vocab_size] out>i32[batch] seeds:u64[batch] batch vocab_size k temperature:float " \
     "dtype:dtype stream"
  op :topp_sample_ex, :cudann_topp_sample_ex,
     "logits:t(dtype)[batch*vocab_size] out>i32[batch] seeds:u64[batch] batch vocab_size top_p:float " \
     "temperature:float dtype:dtype stream"
  # The forward ops with a data type: swiglu, attention and RoPE compute in
  # float32 and round once; embedding and the KV-cache write copy elements as
  # they are. Attention's mask and lse and RoPE's freqs stay float32.
  op :swiglu_ex, :cudann_swiglu, "gate:t(dtype)[n] up:t(dtype)[n] out>t(dtype)[n] n:int64=gate dtype:dtype stream"
  op :embedding_ex, :cudann_embedding,
     "ids:i32[n_ids] table:t(dtype)[vocab_size*dim] out>t(dtype)[n_ids*dim] n_ids vocab_size dim dtype:dtype stream"
  op :attention_forward_ex, :cudann_attention_forward,
     "q:t(dtype)[batch*q_len*n_heads*head_dim] k:t(dtype)[batch*kv_capacity*n_kv_heads*head_dim] " \
     "v:t(dtype)[batch*kv_capacity*n_kv_heads*head_dim] mask?f32[q_len*kv_len] " \
     "out>t(dtype)[batch*q_len*n_heads*head_dim] lse>f32[batch*q_len*n_heads] batch q_len kv_len kv_capacity " \
     "n_heads n_kv_heads head_dim pos0 is_causal:bool scale:float dtype:dtype stream"
  op :kv_cache_write_ex, :cudann_kv_cache_write,
     "k_new:t(dtype)[batch*new_len*n_kv_heads*head_dim] v_new:t(dtype)[batch*new_len*n_kv_heads*head_dim] " \
     "k_cache!t(dtype)[batch*max_seq*n_kv_heads*head_dim] v_cache!t(dtype)[batch*max_seq*n_kv_heads*head_dim] " \
     "batch new_len max_seq n_kv_heads head_dim pos dtype:dtype stream"
  op :rope_qk_ex, :cudann_rope_qk_ex,
     "q:t(dtype)[batch*seq_len*n_q_heads*head_dim] k:t(dtype)[batch*seq_len*n_kv_heads*head_dim] " \
     "freqs:f32[>=(seq_len+offset)*(head_dim/2)] q_out>t(dtype)[batch*seq_len*n_q_heads*head_dim] " \
     "k_out>t(dtype)[batch*seq_len*n_kv_heads*head_dim] batch seq_len n_q_heads n_kv_heads head_dim offset " \
     "dtype:dtype stream"

  DTYPE_SIZES = { F32 => 4, F16 => 2, BF16 => 2, I32 => 4, I64 => 8, F64 => 8, U8 => 1 }.freeze

  # The strided, batched GEMM with a data type per matrix (cudann_gemm_ex):
  # C_i = alpha op(A_i) op(B_i) + beta C_i; c is written in place (and
  # returned). Leading dimensions default to the stored matrices' widths.
  # Each operand must hold at least the elements its strides span. Types F32
  # (Floats), F16 and BF16 (Integers: the uint16 bits), accumulated in float32.
  def self.gemm_ex(a, b, c, m:, n:, k:, trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0,
                   lda: nil, ldb: nil, ldc: nil, stride_a: 0, stride_b: 0, stride_c: 0, batch: 1,
                   a_type: F32, b_type: F32, c_type: F32, stream: nil)
    fn = "Cudann.gemm_ex"
    (pa, pb, pc), write_c = gemm_operands(fn, [[a, a_type, lda, stride_a], [b, b_type, ldb, stride_b],
                                               [c, c_type, ldc, stride_c]], m, n, k, trans_a, trans_b, batch: batch)
    check(Native.cudann_gemm_ex(trans_a ? 1 : 0, trans_b ? 1 : 0, m, n, k, alpha, *pa, *pb, beta, *pc, batch,
                                stream_pointer(fn, stream)))
    write_c&.call
    c
  end

  # The grouped GEMM of a mixture of experts (cudann_gemm_grouped): gemm_ex's
  # products over groups instead of a batch, group g (its matrices stride_a,
  # stride_b, stride_c apart) covering indices offsets[g]...offsets[g + 1] of
  # the rows of C, or of k with group_inner. offsets (int32: an Array,
  # FFI::MemoryPointer, Cudann::Memory or Numo::Int32) holds groups + 1
  # entries, not decreasing, within [0, m] (or [0, k]). Rows grouped: those
  # rows of C_g are alpha op(A_g) op(B_g) + beta C_g; rows in no group are not
  # written. group_inner: C_g = alpha op(A_g)[:, ks] op(B_g)[ks, :] + beta C_g
  # over the indices ks of group g, for every group (an empty one scales C_g by
  # beta). Operands, types and the result as gemm_ex. Offsets out of order or
  # range are INVALID_VALUE where the host can read them; in device memory they
  # are read on the device (no host round trip).
  def self.gemm_grouped(a, b, c, offsets, m:, n:, k:, group_inner: false, trans_a: false, trans_b: false,
                        alpha: 1.0, beta: 0.0, lda: nil, ldb: nil, ldc: nil, stride_a: 0, stride_b: 0, stride_c: 0,
                        a_type: F32, b_type: F32, c_type: F32, stream: nil)
    fn = "Cudann.gemm_grouped"
    entries = Tensor.count(fn, :offsets, offsets, :i32)
    invalid("#{fn}: offsets must hold groups + 1 entries (got none)") if entries.zero?
    (pa, pb, pc), write_c = gemm_operands(fn, [[a, a_type, lda, stride_a], [b, b_type, ldb, stride_b],
                                               [c, c_type, ldc, stride_c]], m, n, k, trans_a, trans_b,
                                          groups: entries - 1)
    check(Native.cudann_gemm_grouped(trans_a ? 1 : 0, trans_b ? 1 : 0, group_inner ? 1 : 0, m, n, k, alpha, *pa,
                                     *pb, beta, *pc, Tensor.pointer(offsets, :i32, entries)[0], entries - 1,
                                     stream_pointer(fn, stream)))
    write_c&.call
    c
  end

  # The C arguments [pointer, type, leading dimension, stride] of the operands
  # ([tensor, type, ld or nil, stride] each) A, B and C of a strided GEMM of
  # `count` (one keyword: batch or groups) products, and the lambda writing C
  # back (or nil). Leading dimensions default to the stored matrices' widths;
  # each operand must hold at least the elements it spans.
  def self.gemm_operands(fn, operands, m, n, k, trans_a, trans_b, **count)
    strides = operands.map(&:last)
    { m: m, n: n, k: k, **count, stride_a: strides[0], stride_b: strides[1], stride_c: strides[2] }.each do |name, v|
      invalid("#{fn}: #{name} must be an Integer >= 0 (got #{v.inspect})") unless v.is_a?(Integer) && v >= 0
    end
    batch = count.values.first
    shapes = [trans_a ? [k, m] : [m, k], trans_b ? [n, k] : [k, n], [m, n]]
    write_c = nil
    args = operands.zip(%i[a b c], shapes).map do |(x, type, ld, stride), name, (rows, cols)|
      ld ||= cols
      span = rows.zero? || cols.zero? || batch.zero? ? 0 : (batch - 1) * stride + (rows - 1) * ld + cols
      elem = [F16, BF16].include?(type) ? :u16 : :f32 # another type: the library refuses it
      have = Tensor.count(fn, name, x, elem)
      invalid("#{fn}: #{name} has #{have} elements, want at least #{span}") if have < span
      ptr, back = Tensor.pointer(x, elem, have)
      write_c = back if name == :c
      [ptr, type, ld, stride]
    end
    [args, write_c]
  end
  private_class_method :gemm_operands
end
