"""Half precision: cudann.convert bit for bit against numpy's float16 and
ml_dtypes' bfloat16 casts, and every dtype-driven op (the `_ex` entry points
and the forward ops' dtype) against the float32 op on the widened inputs,
rounded with the same cast; embedding and the KV-cache write against numpy
copies of the bits.

NaNs are compared as "a NaN, quiet bit set, same sign": the library always
writes quiet NaNs, where numpy may keep a signalling payload. bfloat16 needs
ml_dtypes (installed by scripts/install-test-deps.sh); without it those cases
skip, visibly."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - CI installs it
    ml_dtypes = None

F32 = np.float32
NO_ML_DTYPES = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed (bfloat16)")
HALVES = ["float16", pytest.param("bfloat16", marks=NO_ML_DTYPES)]
# The reference casts overflow to infinity and carry NaNs on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning",
                                        "ignore:invalid value encountered in cast:RuntimeWarning")

# (exponent mask, quiet bit, sign bit) of each type's bit pattern.
LAYOUT = {"float16": (0x7C00, 0x0200, 0x8000), "bfloat16": (0x7F80, 0x0040, 0x8000),
          "float32": (0x7F800000, 0x00400000, 0x80000000)}


def npdt(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def bits(x):
    x = np.ascontiguousarray(x)
    return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32).astype(np.uint64)


def assert_same_bits(got, want, what=""):
    """Identical bit patterns, except that a NaN of `want` needs a quiet NaN of the same sign in `got`."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    exp, quiet, sign = LAYOUT[got.dtype.name]
    g, w = bits(got).ravel(), bits(want).ravel()
    mant = (sign - 1) & ~exp
    w_nan = ((w & exp) == exp) & ((w & mant) != 0)
    g_qnan = ((g & exp) == exp) & ((g & quiet) != 0)
    ok = np.where(w_nan, g_qnan & ((g & sign) == (w & sign)), g == w)
    if not ok.all():
        i = int(np.argmin(ok))
        raise AssertionError(f"{what}: {int((~ok).sum())} of {ok.size} differ; first at {i}: "
                             f"got {int(g[i]):#x}, want {int(w[i]):#x} ({want.ravel()[i]!r})")


def all_patterns(name):
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(npdt(name))


def float32_cases(rng):
    """~1M float32 values: random bit patterns (every exponent, NaNs included), the
    exact halfway points between neighbouring float16 and bfloat16 values and their
    float32 neighbours, and the special values."""
    random_bits = rng.integers(0, 1 << 32, 1 << 19, dtype=np.uint64).astype(np.uint32).view(F32)
    # float16: midpoints of every pair of neighbouring finite values (and of 65504 and
    # the overflow threshold 65536), exact in float32.
    h = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    nxt = np.append(h[1:], 65536.0)
    mid16 = ((h + nxt) / 2).astype(F32)
    # bfloat16: a float32 whose low 16 bits are 0x8000 is halfway.
    top = np.arange(1 << 16, dtype=np.uint32) << 16
    mid_bf = (top | 0x8000).view(F32)
    mids = np.concatenate([mid16, -mid16, mid_bf])
    with np.errstate(invalid="ignore"):  # the NaN patterns among the bfloat16 midpoints
        near = np.concatenate([np.nextafter(mids, F32(np.inf)), np.nextafter(mids, F32(-np.inf))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.996, 65520, 65536, 1e-8, 2.0**-24, 2.0**-25,
                        3 * 2.0**-26, np.finfo(F32).max, np.finfo(F32).tiny, np.finfo(F32).smallest_subnormal,
                        1.0, -1.0, 1 / 3], F32)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0x7FA01234,
                     0x7F80E000, 0xFF812345], np.uint32).view(F32)
    x = np.concatenate([random_bits, mids, near, special, -special, nans])
    assert x.size > 900_000
    return x


# --------------------------------------------------------------------- convert

@pytest.mark.parametrize("name", HALVES)
def test_convert_every_half_to_float32(name):
    h = all_patterns(name)
    got = cudann.convert(h, np.float32)
    assert got.dtype == F32 and got.shape == h.shape
    assert_same_bits(got, h.astype(F32), f"{name} -> float32")
    # And back again: every non-NaN value round-trips exactly.
    back = cudann.convert(got, name)
    assert back.dtype == npdt(name)
    assert_same_bits(back, h, f"{name} -> float32 -> {name}")


@pytest.mark.parametrize("name", HALVES)
def test_convert_float32_to_half_rounds_as_numpy(rng, name):
    x = float32_cases(rng)
    got = cudann.convert(x, name)
    assert got.dtype == npdt(name) and got.shape == x.shape
    assert_same_bits(got, x.astype(npdt(name)), f"float32 -> {name}")


@NO_ML_DTYPES
@pytest.mark.parametrize("src,dst", [("float16", "bfloat16"), ("bfloat16", "float16")])
def test_convert_between_the_half_types(src, dst):
    h = all_patterns(src)
    want = h.astype(F32).astype(npdt(dst))  # half -> float32 is exact: one rounding
    assert_same_bits(cudann.convert(h, dst), want, f"{src} -> {dst}")


def test_convert_forms(rng):
    x = rng.standard_normal((3, 4, 5)).astype(F32)
    want = x.astype(np.float16)
    for dtype in ("float16", np.float16, np.dtype(np.float16), "half"):
        y = cudann.convert(x, dtype)
        assert y.shape == (3, 4, 5)
        assert_same_bits(y, want)
    out = np.zeros((3, 4, 5), np.float16)
    assert cudann.convert(x, "float16", out=out) is out
    assert_same_bits(out, want)
    same = cudann.convert(want, "float16")  # the same type copies
    assert same is not want
    assert_same_bits(same, want)
    assert cudann.convert(want, "float16", out=want) is want  # in place, same type: nothing to do
    assert_same_bits(cudann.convert(np.zeros((0, 3), F32), "float16"), np.zeros((0, 3), np.float16))
    with pytest.raises(TypeError):
        cudann.convert(x, "int32")
    with pytest.raises(TypeError):
        cudann.convert(x.astype(np.float64), "float16")
    with pytest.raises(TypeError):
        cudann.convert(x, "float16", out=np.zeros((3, 4, 5), F32))
    with pytest.raises(ValueError):
        cudann.convert(x, "float16", out=np.zeros((3, 4, 6), np.float16))


@NO_ML_DTYPES
def test_convert_bfloat16_forms(rng):
    x = rng.standard_normal(100).astype(F32)
    want = x.astype(ml_dtypes.bfloat16)
    for dtype in ("bfloat16", ml_dtypes.bfloat16, np.dtype(ml_dtypes.bfloat16)):
        assert_same_bits(cudann.convert(x, dtype), want)


# ------------------------------------------------------------------- _ex ops

def half_data(rng, name, shape, scale=4.0, specials=True):
    """Normal values of `scale`, rounded to the half type, with some subnormals,
    large values, infinities, zeros and NaNs sprinkled in."""
    x = (rng.standard_normal(shape) * scale).astype(F32)
    if specials and x.size >= 16:
        flat = x.reshape(-1)
        picks = rng.choice(flat.size, size=max(8, flat.size // 50), replace=False)
        big = 60000.0 if name == "float16" else 1e38
        pool = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3e-6, -4e-7, 6e-8, big, -big, 1e-40], F32)
        flat[picks] = rng.choice(pool, size=picks.size)
    return x.astype(npdt(name))


def any_bits(rng, name, shape):
    """Uniformly random bit patterns: every exponent, NaNs and infinities included."""
    return rng.integers(0, 1 << 16, shape, dtype=np.uint32).astype(np.uint16).view(npdt(name))


def widened(x):
    return np.asarray(x).astype(F32)


SIZES = [1, 33, 4097, 100_000]  # the last beyond the library's per-worker scratch


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op", ["add", "mul"])
def test_add_mul(rng, name, n, op):
    fn = getattr(cudann, op)
    for a, b in ((half_data(rng, name, n), half_data(rng, name, n)), (any_bits(rng, name, n), any_bits(rng, name, n))):
        want = fn(widened(a), widened(b)).astype(npdt(name))
        got = fn(a, b)
        assert got.dtype == npdt(name)
        assert_same_bits(got, want, f"{op} {name}")
        out = np.empty(n, npdt(name))
        assert fn(a, b, out=out) is out
        assert_same_bits(out, want, f"{op} {name} out=")
        fn(a, b, out=b)  # in place
        assert_same_bits(b, want, f"{op} {name} in place")


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("n", SIZES)
def test_scale(rng, name, n):
    for factor in (F32(-0.3), F32(1e-3), F32(300.0), F32(0.0)):
        for x in (half_data(rng, name, n), any_bits(rng, name, n)):
            want = cudann.scale(widened(x), factor).astype(npdt(name))
            assert_same_bits(cudann.scale(x, factor), want, f"scale {name} by {factor}")
            cudann.scale(x, factor, out=x)
            assert_same_bits(x, want, f"scale {name} in place")


SHAPES = [(1, 1), (3, 33), (4, 4097), (2, 70_000), (2, 3, 50)]


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax(rng, name, shape):
    x = half_data(rng, name, shape, specials=False)
    flat = x.reshape(-1, shape[-1])
    flat[0, ::3] = -np.inf
    if flat.shape[0] > 1:
        flat[-1, :] = -np.inf  # a fully masked row: zeros
    if flat.shape[0] > 2:
        flat[1, shape[-1] // 2] = np.inf  # +inf: NaN row, as the float32 op
    want = cudann.softmax(widened(x)).astype(npdt(name))
    got = cudann.softmax(x)
    assert got.dtype == npdt(name) and got.shape == x.shape
    assert_same_bits(got, want, f"softmax {name}")
    cudann.softmax(x, out=x)
    assert_same_bits(x, want, f"softmax {name} in place")


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rmsnorm(rng, name, shape):
    x = half_data(rng, name, shape, specials=False)
    w = half_data(rng, name, shape[-1], scale=1.0, specials=False)
    if x.size > 64:
        x.reshape(-1)[5] = 3e-6  # subnormal in float16
        x.reshape(-1)[-7] = 6e4 if name == "float16" else 1e30
    for eps in (1e-5, 0.0, 1.0):
        want = cudann.rmsnorm(widened(x), widened(w), eps=eps).astype(npdt(name))
        got = cudann.rmsnorm(x, w, eps=eps)
        assert got.dtype == npdt(name)
        assert_same_bits(got, want, f"rmsnorm {name} eps={eps}")
    x2 = x.copy()
    cudann.rmsnorm(x2, w, out=x2)
    assert_same_bits(x2, cudann.rmsnorm(widened(x), widened(w)).astype(npdt(name)), f"rmsnorm {name} in place")
    zeros = np.zeros(shape, npdt(name))
    want = cudann.rmsnorm(widened(zeros), widened(w), eps=1e-5).astype(npdt(name))  # signed zeros
    assert_same_bits(cudann.rmsnorm(zeros, w, eps=1e-5), want, "rmsnorm of zeros")


def test_half_ops_refuse_mixed_or_foreign_dtypes(rng):
    a = half_data(rng, "float16", 8)
    with pytest.raises(TypeError):
        cudann.add(a, a.astype(F32))
    with pytest.raises(TypeError):
        cudann.mul(a.astype(F32), a)
    with pytest.raises(TypeError):
        cudann.add(a, a, out=np.zeros(8, F32))
    with pytest.raises(TypeError):
        cudann.rmsnorm(a.reshape(2, 4), np.ones(4, F32))
    with pytest.raises(TypeError):
        cudann.softmax(a.reshape(2, 4), out=np.zeros((2, 4), F32))
    with pytest.raises(TypeError):
        cudann.argmax(a.astype(np.float64).reshape(2, 4))
    with pytest.raises(TypeError):
        cudann.add(a.view(np.uint16), a.view(np.uint16))  # bits are not a dtype


@NO_ML_DTYPES
def test_float16_and_bfloat16_do_not_mix(rng):
    a = half_data(rng, "float16", 8)
    with pytest.raises(TypeError):
        cudann.add(a, a.astype(ml_dtypes.bfloat16))
    with pytest.raises(TypeError):
        cudann.scale(a, 2.0, out=np.zeros(8, ml_dtypes.bfloat16))


# -------------------------------------------------------------- forward ops

def raw_bits(x):
    """The uint16 bit patterns of a half array, NaN payloads included."""
    return np.ascontiguousarray(x).view(np.uint16)


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("n", SIZES)
def test_swiglu(rng, name, n):
    for gate, up in ((half_data(rng, name, n), half_data(rng, name, n)), (any_bits(rng, name, n), any_bits(rng, name, n))):
        want = cudann.swiglu(widened(gate), widened(up)).astype(npdt(name))
        got = cudann.swiglu(gate, up)
        assert got.dtype == npdt(name)
        assert_same_bits(got, want, f"swiglu {name}")
        cudann.swiglu(gate, up, out=gate)  # in place
        assert_same_bits(gate, want, f"swiglu {name} in place")


@pytest.mark.parametrize("name", HALVES)
def test_embedding_copies_rows_bit_for_bit(rng, name):
    vocab, d = 300, 513
    table = any_bits(rng, name, (vocab, d))  # NaN payloads too: copied, not converted
    ids = rng.integers(-2, vocab, (3, 100)).astype(np.int32)
    want = np.where((ids >= 0)[..., None], raw_bits(table)[np.maximum(ids, 0)], np.uint16(0))  # +0 for padding
    got = cudann.embedding(ids, table)
    assert got.dtype == npdt(name) and got.shape == (3, 100, d)
    np.testing.assert_array_equal(raw_bits(got), want)
    out = any_bits(rng, name, (3, 100, d))
    assert cudann.embedding(ids, table, out=out) is out
    np.testing.assert_array_equal(raw_bits(out), want)


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("pos,new_len", [(0, 1), (5, 3), (0, 12)])
def test_kv_cache_write_copies_bit_for_bit(rng, name, pos, new_len):
    b, max_seq, g, d = 2, 12, 3, 64
    k_new, v_new = any_bits(rng, name, (b, new_len, g, d)), any_bits(rng, name, (b, new_len, g, d))
    k_cache, v_cache = any_bits(rng, name, (b, max_seq, g, d)), any_bits(rng, name, (b, max_seq, g, d))
    want_k, want_v = raw_bits(k_cache).copy(), raw_bits(v_cache).copy()
    want_k[:, pos:pos + new_len], want_v[:, pos:pos + new_len] = raw_bits(k_new), raw_bits(v_new)
    cudann.kv_cache_write(k_new, v_new, k_cache, v_cache, pos)
    np.testing.assert_array_equal(raw_bits(k_cache), want_k)
    np.testing.assert_array_equal(raw_bits(v_cache), want_v)


# (batch, q_len, kv_len, kv_capacity, n_heads, n_kv_heads, head_dim, pos0, causal, masked)
ATTENTION = [(2, 5, 5, 5, 4, 2, 8, 0, True, False),  # training, GQA
             (3, 1, 7, 12, 6, 1, 16, 6, True, False),  # one decoding step against a KV cache, MQA
             (1, 70, 70, 70, 2, 2, 32, 0, True, True),  # several 64-query blocks, a mask
             (2, 3, 90, 100, 4, 4, 64, 87, False, True)]  # not causal, a fully masked row


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("b,ql,kv,cap,h,g,d,pos0,causal,masked", ATTENTION)
def test_attention_forward(rng, name, b, ql, kv, cap, h, g, d, pos0, causal, masked):
    q = half_data(rng, name, (b, ql, h, d), scale=1.0, specials=False)
    k, v = (half_data(rng, name, (b, cap, g, d), scale=1.0, specials=False) for _ in range(2))
    k[:, kv:], v[:, kv:] = np.nan, np.nan  # cache positions past kv_len are never read
    mask = None
    if masked:
        mask = rng.standard_normal((ql, kv)).astype(F32)
        mask[-1] = -np.inf  # a row with every key masked: zeros, lse -inf
    kw = dict(kv_len=kv, mask=mask, pos0=pos0, causal=causal)
    want, want_lse = cudann.attention_forward(widened(q), widened(k), widened(v), **kw)
    got, lse = cudann.attention_forward(q, k, v, **kw)
    assert got.dtype == npdt(name) and lse.dtype == F32
    assert_same_bits(got, want.astype(npdt(name)), f"attention {name}")
    assert_same_bits(lse, want_lse, f"attention lse {name}")  # the float32 op's, exactly
    out = np.empty_like(q)
    o, no_lse = cudann.attention_forward(q, k, v, out=out, need_lse=False, **kw)
    assert o is out and no_lse is None
    assert_same_bits(out, want.astype(npdt(name)), f"attention {name} out=")


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("b,s,hq,hk,d,offset", [(1, 1, 1, 1, 2, 0), (2, 5, 4, 2, 16, 3), (2, 300, 8, 2, 64, 40)])
def test_rope_qk(rng, name, b, s, hq, hk, d, offset):
    freqs = cudann.rope_freqs(s + offset, d)
    q, k = half_data(rng, name, (b, s, hq, d)), half_data(rng, name, (b, s, hk, d))
    want_q, want_k = (x.astype(npdt(name)) for x in cudann.rope_qk(widened(q), widened(k), freqs, offset))
    got_q, got_k = cudann.rope_qk(q, k, freqs, offset)
    assert got_q.dtype == got_k.dtype == npdt(name)
    assert_same_bits(got_q, want_q, f"rope_qk q {name}")
    assert_same_bits(got_k, want_k, f"rope_qk k {name}")
    q_out, k_out = cudann.rope_qk(q, k, freqs, offset, q_out=q, k_out=k)  # in place
    assert q_out is q and k_out is k
    assert_same_bits(q, want_q, f"rope_qk q {name} in place")
    assert_same_bits(k, want_k, f"rope_qk k {name} in place")


@pytest.fixture
def no_library_call(monkeypatch):
    """Fails the test if an op enters the library (its checks must refuse first)."""
    def entered(name, *args):
        raise AssertionError(f"{name} was called")

    monkeypatch.setattr(cudann.ops, "call", entered)


FORWARD_CALLS = {  # each op with its `x` operands of dtype a and its `y` operands of dtype b
    "swiglu gate/up": lambda x, y: cudann.swiglu(x((8,)), y((8,))),
    "swiglu out": lambda x, y: cudann.swiglu(x((8,)), x((8,)), out=y((8,))),
    "embedding out": lambda x, y: cudann.embedding(np.zeros(2, np.int32), x((4, 3)), out=y((2, 3))),
    "attention k": lambda x, y: cudann.attention_forward(x((1, 2, 2, 4)), y((1, 2, 2, 4)), x((1, 2, 2, 4))),
    "attention out": lambda x, y: cudann.attention_forward(x((1, 2, 2, 4)), x((1, 2, 2, 4)), x((1, 2, 2, 4)),
                                                           out=y((1, 2, 2, 4))),
    "kv_cache_write caches": lambda x, y: cudann.kv_cache_write(x((1, 1, 1, 4)), x((1, 1, 1, 4)), y((1, 3, 1, 4)),
                                                                y((1, 3, 1, 4)), 0),
    "rope_qk k": lambda x, y: cudann.rope_qk(x((1, 2, 1, 4)), y((1, 2, 1, 4)), np.zeros((2, 2), F32)),
    "rope_qk q_out": lambda x, y: cudann.rope_qk(x((1, 2, 1, 4)), x((1, 2, 1, 4)), np.zeros((2, 2), F32),
                                                 q_out=y((1, 2, 1, 4))),
}
MIXES = [("float16", "float32"), ("float32", "float16"), pytest.param("float16", "bfloat16", marks=NO_ML_DTYPES),
         pytest.param("bfloat16", "float32", marks=NO_ML_DTYPES)]


@pytest.mark.parametrize("a,b", MIXES)
@pytest.mark.parametrize("what", list(FORWARD_CALLS))
def test_forward_ops_refuse_mixed_dtypes_before_calling(no_library_call, what, a, b):
    with pytest.raises(TypeError):
        FORWARD_CALLS[what](lambda shape: np.zeros(shape, npdt(a)), lambda shape: np.zeros(shape, npdt(b)))


def test_forward_ops_keep_float32_side_operands(no_library_call):
    h = np.zeros((1, 2, 2, 4), np.float16)
    with pytest.raises(TypeError):  # the mask is float32 whatever the tensors' dtype
        cudann.attention_forward(h, h, h, mask=np.zeros((2, 2), np.float16))
    with pytest.raises(TypeError):  # so are lse and the RoPE angles
        cudann.attention_forward(h, h, h, lse=np.zeros((1, 2, 2), np.float16))
    with pytest.raises(TypeError):
        cudann.rope_qk(h, h, np.zeros((2, 2), np.float16))


# ------------------------------------------------------------------ decoding

SEEDS = (np.arange(4000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(99)


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("rows,vocab", [(1, 1), (31, 33), (8, 4097), (2, 70_000)])
def test_argmax(rng, name, rows, vocab):
    x = half_data(rng, name, (rows, vocab), specials=False)
    if rows > 2:
        x[0, ::2] = np.nan
        x[1, :] = -np.inf
        x[2, :] = x[2, 0]  # all tied
    got = cudann.argmax(x)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, cudann.argmax(widened(x)))
    np.testing.assert_array_equal(got, np.argmax(widened(x), axis=1))


SAMPLERS = [("sample", ()), ("topk_sample", (1,)), ("topk_sample", (50,)), ("topp_sample", (F32(0.5),)),
            ("topp_sample", (F32(0.95),))]


@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("op,extra", SAMPLERS)
@pytest.mark.parametrize("rows,vocab", [(200, 33), (64, 4097), (3, 70_000)])
def test_samplers_pick_the_float32_tokens(rng, name, op, extra, rows, vocab):
    x = half_data(rng, name, (rows, vocab), scale=3.0, specials=False)
    x[0, 1::2] = -np.inf
    seeds = SEEDS[:rows].copy()
    fn = getattr(cudann, op)
    for temperature in (0.0, 0.7, 1.0, 2.5):
        got = fn(x, seeds, *extra, temperature=temperature)
        want = fn(widened(x), seeds, *extra, temperature=temperature)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want, err_msg=f"{op}{extra} {name} T={temperature}")
    assert (fn(x, 7, *extra) == fn(widened(x), 7, *extra)).all()  # derived seeds


# ----------------------------------------------------------------------- gemm

def half_rtol(name):
    return 2.0 ** -11 if name == "float16" else 2.0 ** -8  # half an ulp, relative


@pytest.mark.parametrize("a_t,b_t,c_t", [("float16", "float16", "float16"), ("float16", "float16", "float32"),
                                         ("float32", "float16", "float16"), ("bfloat16", "bfloat16", "bfloat16"),
                                         ("float32", "bfloat16", "float32"), ("bfloat16", "float16", "bfloat16")])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 64, 256), (3, 33, 100), (64, 31, 17)])
def test_gemm_ex_half_operands(rng, a_t, b_t, c_t, trans_b, m, n, k):
    if "bfloat16" in (a_t, b_t, c_t) and ml_dtypes is None:
        pytest.skip("ml_dtypes is not installed (bfloat16)")
    a = rng.standard_normal((m, k)).astype(F32).astype(npdt(a_t))
    bt = rng.standard_normal((n, k) if trans_b else (k, n)).astype(F32).astype(npdt(b_t))
    c0 = rng.standard_normal((m, n)).astype(F32).astype(npdt(c_t))
    b64 = ref.f64(widened(bt)).T if trans_b else ref.f64(widened(bt))
    a64, c64 = ref.f64(widened(a)), ref.f64(widened(c0))
    alpha, beta = 0.75, -0.5
    want = alpha * (a64 @ b64) + beta * c64
    bound = abs(alpha) * (np.abs(a64) @ np.abs(b64)) + abs(beta) * np.abs(c64)
    rtol = 1e-5 + (half_rtol(c_t) * 1.01 if c_t != "float32" else 0)
    c = c0.copy()
    assert cudann.gemm_ex(a, bt, out=c, trans_b=trans_b, alpha=alpha, beta=beta) is c
    assert c.dtype == npdt(c_t)
    assert_close(widened(c), want, rtol=rtol, scale=bound, atol=1e-7)
    if c_t == a_t:  # an allocated out takes a's dtype
        got = cudann.gemm_ex(a, bt, trans_b=trans_b, alpha=alpha)
        assert got.dtype == npdt(a_t)
        assert_close(widened(got), alpha * (a64 @ b64), rtol=rtol, scale=abs(alpha) * (np.abs(a64) @ np.abs(b64)),
                     atol=1e-7)


@pytest.mark.parametrize("name", HALVES)
def test_gemm_ex_half_batched_and_padded(rng, name):
    batch, m, n, k = 3, 5, 7, 9
    a = rng.standard_normal((batch, m, k + 3)).astype(F32).astype(npdt(name))[:, :, :k]  # padded rows
    b = rng.standard_normal((k, n)).astype(F32).astype(npdt(name))  # shared by every batch entry
    got = cudann.gemm_ex(a, b)
    assert got.shape == (batch, m, n) and got.dtype == npdt(name)
    a64, b64 = ref.f64(widened(a)), ref.f64(widened(b))
    assert_close(widened(got), a64 @ b64, rtol=1e-5 + half_rtol(name) * 1.01, scale=np.abs(a64) @ np.abs(b64),
                 atol=1e-7)


@NO_ML_DTYPES
def test_torch_bfloat16_tensors_through_dlpack(rng):
    torch = pytest.importorskip("torch")
    x = half_data(rng, "bfloat16", (4, 33), specials=False)
    t = torch.from_numpy(x.view(np.uint16).astype(np.int16)).view(torch.bfloat16)  # the same bits
    got = cudann.softmax(t)  # a host tensor: the output is a numpy array of x's dtype
    assert_same_bits(got, cudann.softmax(widened(x)).astype(ml_dtypes.bfloat16), "softmax of a torch tensor")
    np.testing.assert_array_equal(cudann.argmax(t), cudann.argmax(widened(x)))
