"""Independent JAX reference for the MoE transformer of /work/shared/MODEL.md.

The yardstick for examples/train_moe and examples/generate_moe: written from
MODEL.md and the op definitions of ABI.md only, never from the project's sources.
Reference modes (train, generate) run in float64; `bench` runs the same training
step in float32 under one jax.jit as the speed baseline.

    python3 moe_reference.py init --config config.json --seed 0 --out DIR
    python3 moe_reference.py data --vocab 1000 --tokens 100000 --seed 0 --out tokens.bin
    python3 moe_reference.py train --model DIR --data tokens.bin --batch 4 --seq 64 \
        --steps 10 --lr 1e-3 --log log.jsonl [--grads g.safetensors] [--save OUT]
    python3 moe_reference.py generate --model DIR --prompt "1 2 3" --max-new 8 [--logits FILE]
    python3 moe_reference.py bench --model DIR --data tokens.bin --batch 8 --seq 128 --steps 20 --lr 1e-3
    python3 moe_reference.py selftest

MoE in the two modes: the reference (`moe_dense`) evaluates every expert on every
token and weights the results by the routing weights (zero for experts not chosen),
the literal formula with no dispatch logic. `bench` uses `moe_dispatch`: assignments
sorted by expert into groups padded to whole blocks, each block one batched matmul
against its expert's weights, so about T*k rows (+ < E blocks of padding) go through
the experts instead of T*E; no token is ever dropped, so it computes the same function
(selftest checks losses and gradients of the two agree).
"""
import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from safetensors.numpy import load_file, save_file

CONFIG_KEYS = ("vocab_size", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
               "ffn_dim", "n_experts", "top_k_experts", "rope_base", "rms_eps",
               "aux_loss_alpha", "max_seq_len")
EXPERT_MATS = ("gate", "up", "down")


def die(msg):
    print(f"moe_reference: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------- checkpoint

def load_config(path):
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read config {path}: {e}")
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        die(f"{path}: missing keys {missing}")
    if cfg["n_heads"] % cfg["n_kv_heads"] or cfg["head_dim"] % 2 \
            or not 1 <= cfg["top_k_experts"] <= cfg["n_experts"]:
        die(f"{path}: inconsistent config")
    return cfg


def tensor_shapes(c):
    """Checkpoint names and shapes, in MODEL.md's table order (also the init RNG order)."""
    V, D, H, G, h, F, E = (c[k] for k in ("vocab_size", "hidden_dim", "n_heads", "n_kv_heads",
                                          "head_dim", "ffn_dim", "n_experts"))
    s = {"embed.weight": (V, D)}
    for l in range(c["n_layers"]):
        p = f"layers.{l}."
        s.update({p + "attn_norm.weight": (D,), p + "attn.wq.weight": (H * h, D),
                  p + "attn.wk.weight": (G * h, D), p + "attn.wv.weight": (G * h, D),
                  p + "attn.wo.weight": (D, H * h), p + "ffn_norm.weight": (D,),
                  p + "moe.router.weight": (E, D)})
        for e in range(E):
            q = f"{p}moe.experts.{e}."
            s.update({q + "gate.weight": (F, D), q + "up.weight": (F, D), q + "down.weight": (D, F)})
    s.update({"norm.weight": (D,), "lm_head.weight": (V, D)})
    return s


def to_params(cfg, flat, dtype):
    """Checkpoint dict -> model params; each layer's experts are stacked into one
    [E, ...] array per matrix (AdamW and the global norm are elementwise/whole-set,
    so stacking changes no arithmetic)."""
    params = {}
    for name, a in flat.items():
        if ".moe.experts." not in name:
            params[name] = jnp.asarray(a, dtype)
    for l in range(cfg["n_layers"]):
        for w in EXPERT_MATS:
            params[f"layers.{l}.moe.{w}"] = jnp.asarray(np.stack(
                [flat[f"layers.{l}.moe.experts.{e}.{w}.weight"] for e in range(cfg["n_experts"])]),
                dtype)
    return params


def to_flat(cfg, params):
    """Inverse of to_params, as contiguous float32 numpy arrays under checkpoint names."""
    out = {}
    for name in tensor_shapes(cfg):
        if ".moe.experts." in name:
            pre, rest = name.split(".moe.experts.")
            e, w, _ = rest.split(".")
            a = params[f"{pre}.moe.{w}"][int(e)]
        else:
            a = params[name]
        out[name] = np.ascontiguousarray(np.asarray(a, np.float32))
    return out


def load_checkpoint(d):
    cfg = load_config(os.path.join(d, "config.json"))
    path = os.path.join(d, "model.safetensors")
    try:
        flat = load_file(path)
    except Exception as e:  # safetensors raises its own error types
        die(f"cannot read {path}: {e}")
    for name, shape in tensor_shapes(cfg).items():
        if name not in flat:
            die(f"{path}: missing tensor {name}")
        if flat[name].shape != shape or flat[name].dtype != np.float32:
            die(f"{path}: {name} is {flat[name].dtype}{list(flat[name].shape)}, "
                f"expected float32{list(shape)}")
    return cfg, flat


def save_checkpoint(d, cfg_src, cfg, params):
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(cfg_src, os.path.join(d, "config.json"))
    save_file(to_flat(cfg, params), os.path.join(d, "model.safetensors"))


# ---------------------------------------------------------------------- model

def rmsnorm(x, w, eps):
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_tables(S, h, base, dtype):
    # angle[p, i] = p * base^(-2i/h), computed in float64 whatever the model dtype
    ang = np.arange(S, dtype=np.float64)[:, None] * np.power(float(base), -2.0 * np.arange(h // 2) / h)
    return jnp.asarray(np.cos(ang), dtype), jnp.asarray(np.sin(ang), dtype)


def rope(x, cos, sin):
    """x [B, S, heads, h]: interleaved pairs (x[2i], x[2i+1]) rotated by angle[p, i]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(x.shape)


def attention(q, k, v):
    """q [B,S,H,h], k/v [B,S,G,h]; query head n = g*(H/G) + r reads KV head g = n // (H/G)."""
    B, S, H, h = q.shape
    G = k.shape[2]
    q = q.reshape(B, S, G, H // G, h)
    scores = jnp.einsum("bsgrh,btgh->bgrst", q, k) / math.sqrt(h)
    causal = jnp.tril(jnp.ones((S, S), bool))
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bgrst,btgh->bsgrh", probs, v).reshape(B * S, H * h)


def route(logits, k):
    """Router: p = softmax, top-k by p (lax.top_k puts equal values lower index first;
    selftest checks it), w = p_sel / sum p_sel. Indices are integers, hence constants."""
    p = jax.nn.softmax(logits, axis=-1)
    p_sel, idx = jax.lax.top_k(p, k)
    return p, idx, p_sel / jnp.sum(p_sel, axis=-1, keepdims=True)


def expert_mlp(x, gate, up, down):
    """x [..., n, D] against stacked [..., F, D], [..., F, D], [..., D, F] weights."""
    g = jnp.einsum("...nd,...fd->...nf", x, gate)
    u = jnp.einsum("...nd,...fd->...nf", x, up)
    return jnp.einsum("...nf,...df->...nd", jax.nn.silu(g) * u, down)


def moe_dense(m, w, idx, gate, up, down):
    """Reference: every expert on every token, then sum_e wfull[t,e] * expert_e(m_t)
    where wfull is w scattered onto the chosen experts (0 elsewhere)."""
    wfull = jnp.einsum("tk,tke->te", w, jax.nn.one_hot(idx, gate.shape[0], dtype=m.dtype))
    y = expert_mlp(jnp.broadcast_to(m, (gate.shape[0],) + m.shape), gate, up, down)  # [E,T,D]
    return jnp.einsum("te,etd->td", wfull, y)


def moe_dispatch(m, w, idx, gate, up, down):
    """Same function as moe_dense, computing only the chosen (token, expert) pairs:
    the T*k assignments are sorted by expert and each expert's group is padded to a
    multiple of `bs` rows, so every block of bs rows belongs to one expert and is one
    batched matmul. Under E blocks of padding; static shapes, nothing dropped."""
    T, D = m.shape
    k, E = idx.shape[1], gate.shape[0]
    A = T * k
    # big blocks make efficient matmuls; about two blocks per expert keeps padding small
    bs = min(128, max(8, 2 ** int(math.log2(max(1, A // (2 * E))))))
    nblk = (A + E * (bs - 1)) // bs                 # >= sum_e ceil(count_e / bs)
    flat_e = idx.reshape(-1)                        # assignment a = t*k + j
    order = jnp.argsort(flat_e, stable=True)
    counts = jnp.bincount(flat_e, length=E)
    padded = (counts + bs - 1) // bs * bs
    start, pend = jnp.cumsum(counts) - counts, jnp.cumsum(padded)
    e_sorted = flat_e[order]
    dest = (pend - padded)[e_sorted] + jnp.arange(A) - start[e_sorted]  # row of sorted assignment
    row_tok = jnp.full(nblk * bs, T).at[dest].set(order // k)           # T -> the zero row
    blk_e = jnp.minimum(jnp.searchsorted(pend, jnp.arange(nblk) * bs, side="right"), E - 1)
    xs = jnp.concatenate([m, jnp.zeros((1, D), m.dtype)])[row_tok].reshape(nblk, bs, D)
    y = expert_mlp(xs, gate[blk_e], up[blk_e], down[blk_e]).reshape(nblk * bs, D)
    row_of_assign = jnp.zeros(A, dest.dtype).at[order].set(dest)
    return jnp.einsum("tk,tkd->td", w, y[row_of_assign].reshape(T, k, D))


def forward(params, ids, cfg, moe):
    """ids [B,S] -> logits [B*S, V], sum_l aux_l."""
    B, S = ids.shape
    H, G, h, E, K = (cfg[k] for k in ("n_heads", "n_kv_heads", "head_dim", "n_experts", "top_k_experts"))
    eps = cfg["rms_eps"]
    dtype = params["embed.weight"].dtype
    cos, sin = rope_tables(S, h, cfg["rope_base"], dtype)
    x = params["embed.weight"][ids.reshape(-1)]
    aux = jnp.zeros((), dtype)
    for l in range(cfg["n_layers"]):
        P = lambda n: params[f"layers.{l}.{n}"]
        a = rmsnorm(x, P("attn_norm.weight"), eps)
        q = rope((a @ P("attn.wq.weight").T).reshape(B, S, H, h), cos, sin)
        kk = rope((a @ P("attn.wk.weight").T).reshape(B, S, G, h), cos, sin)
        v = (a @ P("attn.wv.weight").T).reshape(B, S, G, h)
        x = x + attention(q, kk, v) @ P("attn.wo.weight").T
        m = rmsnorm(x, P("ffn_norm.weight"), eps)
        p, idx, w = route(m @ P("moe.router.weight").T, K)
        x = x + moe(m, w, idx, P("moe.gate"), P("moe.up"), P("moe.down"))
        # f_e: fraction of tokens whose top-k holds e (a constant); P_e: mean of p[:, e]
        f = jax.lax.stop_gradient(jnp.sum(jax.nn.one_hot(idx, E, dtype=dtype), axis=(0, 1)) / (B * S))
        aux = aux + cfg["aux_loss_alpha"] * E * jnp.sum(f * jnp.mean(p, axis=0))
    return rmsnorm(x, params["norm.weight"], eps) @ params["lm_head.weight"].T, aux


def loss_fn(params, ids, targets, cfg, moe):
    logits, aux = forward(params, ids, cfg, moe)
    t = targets.reshape(-1)
    valid = t >= 0                                  # negative targets are padding
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, t, 0)[:, None], axis=1)[:, 0]
    n = jnp.maximum(jnp.sum(valid), 1).astype(logits.dtype)   # all padding -> ce = 0
    ce = jnp.sum(jnp.where(valid, nll, 0)) / n
    return ce + aux, (ce, aux)


def make_step(cfg, moe, lr, beta1, beta2, eps, wd, clip):
    """One jitted training step: loss and grads, global-norm clip, AdamW.
    step(params, m, v, t, ids, targets) with t (from 1) a scalar of the model dtype."""
    grad_fn = jax.value_and_grad(lambda p, i, tg: loss_fn(p, i, tg, cfg, moe), has_aux=True)
    tmap = jax.tree_util.tree_map

    def step(params, m, v, t, ids, targets):
        (loss, (ce, aux)), g = grad_fn(params, ids, targets)
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
        scale = jnp.where(norm > clip, clip / norm, 1.0)
        gc = tmap(lambda x: x * scale, g)
        m = tmap(lambda m_, g_: beta1 * m_ + (1 - beta1) * g_, m, gc)
        v = tmap(lambda v_, g_: beta2 * v_ + (1 - beta2) * g_ * g_, v, gc)
        bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
        params = tmap(lambda p, m_, v_: p - lr * ((m_ / bc1) / (jnp.sqrt(v_ / bc2) + eps) + wd * p),
                      params, m, v)
        return params, m, v, {"loss": loss, "ce": ce, "aux": aux, "grad_norm": norm}, g

    return jax.jit(step)


# ----------------------------------------------------------------------- data

def load_tokens(path, V, S):
    try:
        tok = np.fromfile(path, dtype="<i4")
    except OSError as e:
        die(f"cannot read {path}: {e}")
    if tok.size <= S:
        die(f"{path}: {tok.size} tokens, need more than seq {S}")
    if tok.min() < 0 or tok.max() >= V:
        die(f"{path}: token ids must lie in [0, {V})")
    return tok


def get_batch(tok, t, B, S):
    """Row b of step t starts at ((t*B + b)*S) mod (N - S); targets are shifted by one."""
    offs = [((t * B + b) * S) % (tok.size - S) for b in range(B)]
    ids = np.stack([tok[o:o + S] for o in offs])
    tgt = np.stack([tok[o + 1:o + S + 1] for o in offs])
    return ids.astype(np.int32), tgt.astype(np.int32)


# ------------------------------------------------------------------- commands

def zeros_like_tree(params):
    return jax.tree_util.tree_map(jnp.zeros_like, params)


def cmd_train(a):
    cfg, flat = load_checkpoint(a.model)
    params = to_params(cfg, flat, jnp.float64)
    tok = load_tokens(a.data, cfg["vocab_size"], a.seq)
    step = make_step(cfg, moe_dense, a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.clip)
    m, v = zeros_like_tree(params), zeros_like_tree(params)
    with open(a.log, "w") as log:
        for t in range(a.steps):
            ids, tgt = get_batch(tok, t, a.batch, a.seq)
            params, m, v, met, g = step(params, m, v, jnp.float64(t + 1), ids, tgt)
            rec = {"step": t + 1, **{k: float(met[k]) for k in ("loss", "ce", "aux", "grad_norm")}}
            log.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), file=sys.stderr)
            if t == 0 and a.grads:
                save_file(to_flat(cfg, g), a.grads)
    if a.save:
        save_checkpoint(a.save, os.path.join(a.model, "config.json"), cfg, params)


def cmd_generate(a):
    cfg, flat = load_checkpoint(a.model)
    params = to_params(cfg, flat, jnp.float64)
    try:
        ids = [int(s) for s in a.prompt.split()]
    except ValueError:
        die("--prompt must be token ids separated by spaces")
    if not ids or any(not 0 <= i < cfg["vocab_size"] for i in ids):
        die(f"--prompt needs at least one id, all in [0, {cfg['vocab_size']})")
    rows = []
    for _ in range(a.max_new):
        # full recomputation of the whole sequence each step, deliberately no KV cache
        logits, _ = forward(params, jnp.asarray([ids], jnp.int32), cfg, moe_dense)
        last = np.asarray(logits[-1])
        rows.append(last.astype("<f4"))
        ids.append(int(np.argmax(last)))            # first maximal index on ties
    if a.logits:
        with open(a.logits, "wb") as f:
            for r in rows:
                f.write(r.tobytes())
    print(" ".join(map(str, ids)))


def init_flat(cfg, seed):
    rng = np.random.default_rng(seed)
    return {n: (np.ones(s, np.float32) if n.endswith("norm.weight")
                else rng.normal(0.0, 0.02, s).astype(np.float32))
            for n, s in tensor_shapes(cfg).items()}


def cmd_init(a):
    cfg = load_config(a.config)
    os.makedirs(a.out, exist_ok=True)
    shutil.copyfile(a.config, os.path.join(a.out, "config.json"))
    save_file(init_flat(cfg, a.seed), os.path.join(a.out, "model.safetensors"))


def markov_tokens(V, N, seed):
    """A noisy first-order chain: with probability 0.9 the next id is succ[prev] (a fixed
    random permutation), else uniform. Learnable: the ideal ce is about 0.1*ln V + 0.33."""
    rng = np.random.default_rng(seed)
    succ = rng.permutation(V)
    noise, rand = rng.random(N) < 0.1, rng.integers(0, V, N)
    tok = np.empty(N, np.int32)
    tok[0] = rand[0]
    for i in range(1, N):
        tok[i] = rand[i] if noise[i] else succ[tok[i - 1]]
    return tok


def cmd_data(a):
    markov_tokens(a.vocab, a.tokens, a.seed).astype("<i4").tofile(a.out)


def cmd_bench(a):
    cfg, flat = load_checkpoint(a.model)
    params = to_params(cfg, flat, jnp.float32)
    tok = load_tokens(a.data, cfg["vocab_size"], a.seq)
    step = make_step(cfg, moe_dispatch, a.lr, 0.9, 0.95, 1e-8, 0.0, 1.0)
    m, v = zeros_like_tree(params), zeros_like_tree(params)
    batches = [get_batch(tok, t, a.batch, a.seq) for t in range(a.steps + 1)]
    t0 = time.perf_counter()
    params, m, v, met, _ = jax.block_until_ready(step(params, m, v, jnp.float32(1), *batches[0]))
    assert met["loss"].dtype == jnp.float32 and params["embed.weight"].dtype == jnp.float32
    print(f"compile + first step: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    ms = []
    for t in range(1, a.steps + 1):
        t0 = time.perf_counter()
        params, m, v, met, _ = jax.block_until_ready(
            step(params, m, v, jnp.float32(t + 1), *batches[t]))
        ms.append((time.perf_counter() - t0) * 1e3)
    print(f"last loss {float(met['loss']):.4f}", file=sys.stderr)
    print(json.dumps({"ms_per_step": statistics.median(ms), "ms_all": [round(x, 3) for x in ms]}))


# ------------------------------------------------------------------- selftest

TINY = {"vocab_size": 1000, "hidden_dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 1,
        "head_dim": 16, "ffn_dim": 256, "n_experts": 4, "top_k_experts": 2,
        "rope_base": 10000.0, "rms_eps": 1e-6, "aux_loss_alpha": 0.01, "max_seq_len": 512}


def check(cond, what):
    print(f"{'ok  ' if cond else 'FAIL'} {what}")
    if not cond:
        sys.exit(f"selftest FAILED: {what}")


def cmd_selftest(_):
    f64 = jnp.float64
    # top-k ties: equal probabilities go to the lower index; renormalised weights
    _, idx, w = route(jnp.log(jnp.asarray([[0.1, 0.3, 0.3, 0.0001, 0.2999], [1, 1, 1, 1, 1.0]], f64)), 2)
    check(idx.tolist() == [[1, 2], [0, 1]] and np.allclose(w, 0.5), f"top-k tie rule {idx.tolist()}")
    # RoPE: x = (1, 0, 1, 0) at p = 2, h = 4, base 100 -> pair i turned by 2 * 100^(-i/2)
    c, s = rope_tables(3, 4, 100.0, f64)
    r = rope(jnp.asarray([1.0, 0, 1, 0], f64).reshape(1, 1, 1, 4).repeat(3, 1), c, s)[0, 2, 0]
    check(np.allclose(r, [math.cos(2), math.sin(2), math.cos(0.2), math.sin(0.2)]), "rope angles")

    cfg = dict(TINY)
    params = to_params(cfg, init_flat(cfg, 0), f64)
    tok = markov_tokens(cfg["vocab_size"], 20000, 0)
    ids, tgt = get_batch(tok, 0, 2, 32)
    L = jax.jit(lambda p: loss_fn(p, ids, tgt, cfg, moe_dense))
    loss, (ce, aux) = L(params)
    lnv = math.log(cfg["vocab_size"])
    print(f"     initial loss {float(loss):.6f} (ce {float(ce):.6f}, aux {float(aux):.6f}), ln V {lnv:.6f}")
    check(abs(float(ce) - lnv) < 0.05 and abs(float(aux) - 2 * 0.01 * 2) < 2e-3,
          "initial ce ~ ln V, aux ~ n_layers * alpha * k")

    # causality: logits of a prefix do not change when tokens are appended
    la, _ = forward(params, jnp.asarray(ids[:1, :10]), cfg, moe_dense)
    lb, _ = forward(params, jnp.asarray(ids[:1, :20]), cfg, moe_dense)
    check(np.allclose(la, lb[:10], rtol=0, atol=1e-12), "causal mask")

    # padding targets are excluded from the mean
    tpad = tgt.copy(); tpad[:, 16:] = -100
    cp = loss_fn(params, ids, tpad, cfg, moe_dense)[1][0]
    lg, _ = forward(params, jnp.asarray(ids), cfg, moe_dense)
    lp = jax.nn.log_softmax(lg.reshape(2, 32, -1)[:, :16], -1)
    want = -np.mean(np.take_along_axis(np.asarray(lp), tgt[:, :16, None], -1))
    check(abs(float(cp) - want) < 1e-12, "padding targets ignored")

    # jax.grad against central differences, float64, on single entries of several tensors
    g = jax.jit(jax.grad(lambda p: L(p)[0]))(params)
    for name, ix in [("layers.0.moe.router.weight", (1, 3)), ("layers.1.moe.router.weight", (2, 7)),
                     ("layers.0.attn.wq.weight", (5, 9)), ("layers.1.attn.wk.weight", (3, 2)),
                     ("layers.0.moe.gate", (1, 4, 6)), ("layers.1.moe.down", (0, 3, 11)),
                     ("layers.0.attn_norm.weight", (7,)), ("embed.weight", (int(ids[0, 0]), 5)),
                     ("lm_head.weight", (int(tgt[0, 0]), 2)), ("norm.weight", (4,))]:
        h = 1e-5
        plus = {**params, name: params[name].at[ix].add(h)}
        minus = {**params, name: params[name].at[ix].add(-h)}
        fd = (float(L(plus)[0]) - float(L(minus)[0])) / (2 * h)
        an = float(g[name][ix])
        # fd carries ~1e-10 of rounding noise (loss ~7, eps 1e-16, h 1e-5)
        check(abs(fd - an) <= 1e-6 * abs(an) + 5e-10, f"grad {name}{list(ix)}: {an:.9e} fd {fd:.9e}")

    # the bench's dispatched MoE is the same function as the reference's dense one
    Ld = jax.jit(lambda p: loss_fn(p, ids, tgt, cfg, moe_dispatch)[0])
    ld, gd = jax.jit(jax.value_and_grad(Ld))(params)
    gerr = max(float(jnp.max(jnp.abs(gd[k] - g[k]))) for k in g)
    check(abs(float(ld) - float(loss)) < 1e-12 and gerr < 1e-12, f"dispatch == dense (grad diff {gerr:.1e})")

    # ... also under skewed routing (all tokens on two experts, empty experts)
    rng = np.random.default_rng(1)
    m_, w_ = jnp.asarray(rng.normal(size=(50, 8))), jnp.asarray(rng.random((50, 2)))
    W = [jnp.asarray(rng.normal(size=s)) for s in ((4, 6, 8), (4, 6, 8), (4, 8, 6))]
    for idx_ in (np.tile([3, 1], (50, 1)), np.argsort(rng.random((50, 4)), 1)[:, :2]):
        err = float(jnp.max(jnp.abs(moe_dispatch(m_, w_, idx_, *W) - moe_dense(m_, w_, idx_, *W))))
        check(err < 1e-12, f"dispatch == dense, counts {np.bincount(idx_.ravel(), minlength=4).tolist()}")

    # clip and AdamW: first step from zero moments moves each entry by ~lr*sign(g) (+ decay)
    step = make_step(cfg, moe_dense, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0)
    z = zeros_like_tree(params)
    p1, m1, _, met, g1 = step(params, z, z, f64(1), ids, tgt)
    norm = math.sqrt(sum(float(jnp.sum(x * x)) for x in g1.values()))
    check(abs(float(met["grad_norm"]) - norm) < 1e-12 and np.allclose(g1["lm_head.weight"], g["lm_head.weight"]),
          f"grad norm {norm:.6f} before clipping")
    scale = min(1.0, 1.0 / norm)
    check(np.allclose(m1["embed.weight"], 0.1 * scale * g1["embed.weight"], rtol=1e-12, atol=0), "clip scale")
    gw, pw = g1["layers.0.moe.up"], params["layers.0.moe.up"]
    want = pw - 1e-3 * (gw * scale / (jnp.abs(gw * scale) + 1e-8) + 0.1 * pw)
    check(np.allclose(p1["layers.0.moe.up"], want, rtol=0, atol=1e-15), "adamw step 1")

    # end to end through the CLI: init, data, train (loss falls), generate
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "c.json"), "w") as f:
            json.dump(cfg, f)
        main(["init", "--config", f"{d}/c.json", "--seed", "1", "--out", f"{d}/m"])
        main(["data", "--vocab", "1000", "--tokens", "20000", "--seed", "1", "--out", f"{d}/t.bin"])
        main(["train", "--model", f"{d}/m", "--data", f"{d}/t.bin", "--batch", "4", "--seq", "32",
              "--steps", "40", "--lr", "1e-2", "--log", f"{d}/log", "--grads", f"{d}/g", "--save", f"{d}/o"])
        losses = [json.loads(x)["loss"] for x in open(f"{d}/log")]
        check(losses[-1] < losses[0] - 0.15, f"training lowers loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        check(set(load_file(f"{d}/g")) == set(tensor_shapes(cfg)), "grads file names")
        main(["generate", "--model", f"{d}/o", "--prompt", "3 4", "--max-new", "3", "--logits", f"{d}/lg"])
        check(os.path.getsize(f"{d}/lg") == 3 * 1000 * 4, "logits file size")
    print("OK")


# ------------------------------------------------------------------------ cli

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    b = sub.add_parser("bench")
    for p in (t, b):
        p.add_argument("--model", required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--batch", type=int, required=True)
        p.add_argument("--seq", type=int, required=True)
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--lr", type=float, required=True)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--eps", type=float, default=1e-8)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--log", required=True)
    t.add_argument("--grads")
    t.add_argument("--save")
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new", type=int, required=True)
    g.add_argument("--logits")
    i = sub.add_parser("init")
    i.add_argument("--config", required=True)
    i.add_argument("--seed", type=int, required=True)
    i.add_argument("--out", required=True)
    d = sub.add_parser("data")
    d.add_argument("--vocab", type=int, required=True)
    d.add_argument("--tokens", type=int, required=True)
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--out", required=True)
    sub.add_parser("selftest")
    a = ap.parse_args(argv)
    {"train": cmd_train, "generate": cmd_generate, "init": cmd_init, "data": cmd_data,
     "bench": cmd_bench, "selftest": cmd_selftest}[a.cmd](a)


if __name__ == "__main__":
    main()
