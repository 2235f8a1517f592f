"""PyTorch baseline of the MoE transformer of MODEL.md (shared/MODEL.md), for timing
examples/train_moe and examples/generate_moe against PyTorch eager and torch.compile.

    python3 bench/gpu/torch_moe.py train --model DIR --data tokens.bin --batch 8 --seq 128 \
        --steps 20 --lr 1e-3 [--clip 1.0 --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.0] \
        [--compile] [--device cuda|cpu] [--tf32] [--log FILE]
    python3 bench/gpu/torch_moe.py generate --model DIR --batch 1 --prompt-len 64 --new 128 \
        [--compile] [--device cuda|cpu] [--tf32]

train: one JSON line per step as train_moe's --log writes them (to --log, else stdout);
`ms` is wall time of the whole step (batch upload to metrics read back), synchronized.
With --compile the first step (or two) includes compilation; experts' ragged matmuls stay eager.

generate: greedy decoding with a static KV cache of prompt_len + new positions per layer:
one prefill pass over the prompt ids[b, i] = (7 i + b) mod V, then `new` one-token decode
steps, so row b gets new + 1 ids (the prefill yields the first; generate_moe --max-new
new+1 runs the same passes). The whole generation runs once untimed (warm-up, compilation)
and is then timed. Prints row 0's prompt and ids as generate_moe does, then one JSON line;
decode_tokens_per_s = batch * new / decode time.

Semantics as tests/reference/moe_reference.py, in float32 (TF32 only with --tf32, as
CUDANN_ALLOW_TF32=1 allows it for cudann). Weights are held fused where that changes no
arithmetic of the step: wq/wk/wv as one [(H+2G)h, D] matrix, each layer's experts stacked
as gate_up [E, 2F, D] and down [E, D, F]; global-norm clipping and AdamW are elementwise
or over the whole set, so the layout does not change them.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def die(msg):
    sys.exit(f"torch_moe: error: {msg}")


def load_model(d, device):
    """config.json and model.safetensors -> (config, global tensors {embed, norm, lm_head},
    [per-layer tensors]), float32, weights fused as the module's docstring says."""
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    flat = load_file(os.path.join(d, "model.safetensors"))
    V, D, H, G, h, Fd, E = (c[k] for k in ("vocab_size", "hidden_dim", "n_heads", "n_kv_heads",
                                           "head_dim", "ffn_dim", "n_experts"))

    def get(name, *shape):
        t = flat.get(name)
        if t is None or tuple(t.shape) != shape or t.dtype != torch.float32:
            die(f"{d}: {name} missing or not float32{list(shape)}")
        return t

    dev = lambda t: t.to(device).contiguous()
    glob = {"embed": dev(get("embed.weight", V, D)), "norm": dev(get("norm.weight", D)),
            "lm_head": dev(get("lm_head.weight", V, D))}
    layers = []
    for l in range(c["n_layers"]):
        p = f"layers.{l}."
        ex = [f"{p}moe.experts.{e}." for e in range(E)]
        layers.append({k: dev(t) for k, t in {
            "attn_norm": get(p + "attn_norm.weight", D),
            "wqkv": torch.cat([get(p + "attn.wq.weight", H * h, D), get(p + "attn.wk.weight", G * h, D),
                               get(p + "attn.wv.weight", G * h, D)]),
            "wo": get(p + "attn.wo.weight", D, H * h),
            "ffn_norm": get(p + "ffn_norm.weight", D),
            "router": get(p + "moe.router.weight", E, D),
            "gate_up": torch.stack([torch.cat([get(q + "gate.weight", Fd, D), get(q + "up.weight", Fd, D)])
                                    for q in ex]),
            "down": torch.stack([get(q + "down.weight", D, Fd) for q in ex]),
        }.items()})
    return c, glob, layers


def rope(x, cos, sin):
    """x [B, S, n, h]: interleaved pairs (x[2i], x[2i+1]) rotated by angle[p, i]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None], sin[:, None]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


# Ragged sizes: under torch.compile this runs eagerly (its sizes are data; compiling it
# would recompile for every new pattern of 0 and 1 counts, as in small-batch decoding).
@torch.compiler.disable
def experts(xs, counts, gate_up, down):
    """xs [A, D]: rows sorted by expert, counts[e] of them for expert e -> SwiGLU outputs [A, D]."""
    ys, start = [], 0
    for e, n in enumerate(counts.tolist()):                  # one host sync per layer
        if n:
            g, u = (xs[start:start + n] @ gate_up[e].T).chunk(2, dim=-1)
            ys.append((F.silu(g) * u) @ down[e].T)
            start += n
    return torch.cat(ys)


class MoETransformer:
    def __init__(self, cfg, glob, layers, max_len, device):
        self.c, self.g, self.layers = cfg, glob, layers
        h = cfg["head_dim"]
        # angle[p, i] = p * base^(-2i/h), computed in float64 as the reference does
        ang = np.arange(max_len)[:, None] * np.power(float(cfg["rope_base"]), -2.0 * np.arange(h // 2) / h)
        self.cos = torch.tensor(np.cos(ang), dtype=torch.float32, device=device)
        self.sin = torch.tensor(np.sin(ang), dtype=torch.float32, device=device)

    def norm(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.c["rms_eps"])

    def attention(self, W, a, pos, cache):
        """Causal multi-query attention of a [B, S, D] at positions pos..pos+S-1; with a cache
        (k, v [B, G, capacity, h]) their keys and values are written to it and all of
        positions 0..pos+S-1 are attended. Either pos = 0 or S = 1."""
        B, S, _ = a.shape       # sizes from the tensor: under compile S = 1 stays a constant
        H, G, h = self.c["n_heads"], self.c["n_kv_heads"], self.c["head_dim"]
        q, k, v = (a @ W["wqkv"].T).view(B, S, H + 2 * G, h).split([H, G, G], dim=2)
        cos, sin = self.cos[pos:pos + S], self.sin[pos:pos + S]
        q, k, v = rope(q, cos, sin).transpose(1, 2), rope(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            ck, cv = cache
            ck[:, :, pos:pos + S] = k
            cv[:, :, pos:pos + S] = v
            k, v = ck[:, :, :pos + S], cv[:, :, :pos + S]
        # query head n reads KV head n // (H/G)
        k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=S > 1)
        return o.transpose(1, 2).reshape(B, S, H * h) @ W["wo"].T

    def route(self, W, m, with_aux):
        """Router on m [T, D]: p = softmax, top-k by p, w = p_sel / sum p_sel. Returns the
        T*k assignments (a = t*k + j) sorted by expert: their tokens, weights and the
        count of each expert; and the aux loss (or None)."""
        E, K = self.c["n_experts"], self.c["top_k_experts"]
        p = torch.softmax(m @ W["router"].T, dim=-1)
        # top-k by a stable descending sort: equal probabilities go to the lower index
        idx = p.sort(dim=-1, descending=True, stable=True).indices[:, :K]
        p_sel = p.gather(1, idx)
        w = (p_sel / p_sel.sum(dim=-1, keepdim=True)).flatten()
        flat = idx.flatten()
        counts = torch.zeros(E, dtype=torch.long, device=m.device).scatter_add_(0, flat, torch.ones_like(flat))
        order = flat.argsort(stable=True)
        aux = None
        if with_aux:
            # f_e (tokens whose top-k holds e, over T) is a constant; P_e = mean of p[:, e]
            aux = self.c["aux_loss_alpha"] * E * torch.dot(counts.to(m.dtype) / m.shape[0], p.mean(dim=0))
        return order // K, w[order], counts, aux

    def block(self, W, x, pos, cache, with_aux):
        """One layer on the residual stream x [B, S, D]: (new x, its aux loss or None).
        Each expert runs on its own tokens only: gathered in expert order, pushed through
        the expert in one piece each, weighted and scatter-added back."""
        x = x + self.attention(W, self.norm(x, W["attn_norm"]), pos, cache)
        m = self.norm(x, W["ffn_norm"]).flatten(0, 1)
        tok, w, counts, aux = self.route(W, m, with_aux)
        ys = experts(m.index_select(0, tok), counts, W["gate_up"], W["down"])
        return x + torch.zeros_like(m).index_add(0, tok, ys * w[:, None]).view_as(x), aux

    def hidden(self, ids, pos=0, caches=None, with_aux=True):
        """ids [B, S] -> final normed hidden states [B, S, D] and the summed aux loss."""
        x = F.embedding(ids, self.g["embed"])
        aux = x.new_zeros(())
        for l, W in enumerate(self.layers):
            x, a = self.block(W, x, pos, caches[l] if caches else None, with_aux)
            if with_aux:
                aux = aux + a
        return self.norm(x, self.g["norm"]), aux

    def loss(self, ids, targets):
        """(ce + aux, ce, aux); every target of a batch from a token file is a real token."""
        x, aux = self.hidden(ids)
        ce = F.cross_entropy(x.flatten(0, 1) @ self.g["lm_head"].T, targets.flatten())
        return ce + aux, ce, aux

    def next_token(self, ids, pos, caches):
        """Greedy next token of each row after ids [B, S] at positions pos.., caches filled."""
        x, _ = self.hidden(ids, pos, caches, with_aux=False)
        return (x[:, -1] @ self.g["lm_head"].T).argmax(dim=-1)  # first max on ties


def device_of(a):
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return dev


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cmd_train(a):
    dev = device_of(a)
    cfg, glob, layers = load_model(a.model, dev)
    tok = np.fromfile(a.data, dtype="<i4")
    if tok.size <= a.seq:
        die(f"{a.data}: {tok.size} tokens, need more than --seq {a.seq}")
    if tok.min() < 0 or tok.max() >= cfg["vocab_size"]:
        die(f"{a.data}: token ids must lie in [0, {cfg['vocab_size']})")
    params = [p.requires_grad_() for p in [*glob.values(), *(t for W in layers for t in W.values())]]
    model = MoETransformer(cfg, glob, layers, a.seq, dev)
    # torch's AdamW is the step of MODEL.md: p -= lr*wd*p, then p -= lr * m_hat / (sqrt(v_hat) + eps)
    # with bias corrections counted from step 1 (m, v from the clipped gradients)
    # (eager on CUDA: the fused kernel; under compile the foreach form, which inductor fuses)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps,
                            weight_decay=a.weight_decay, fused=dev.type == "cuda" and not a.compile)

    def update():
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads)          # before clipping
        torch._foreach_mul_(grads, (a.clip / norm).clamp(max=1.0))   # scale only if norm > clip
        opt.step()
        return norm

    loss_fn, update_fn = model.loss, update
    if a.compile:
        loss_fn, update_fn = torch.compile(loss_fn), torch.compile(update)
    out = open(a.log, "w") if a.log else sys.stdout
    B, S, N = a.batch, a.seq, tok.size
    for t in range(a.steps):
        sync(dev)
        t0 = time.perf_counter()
        offs = [((t * B + b) * S) % (N - S) for b in range(B)]
        rows = torch.from_numpy(np.stack([tok[o:o + S + 1] for o in offs]).astype(np.int64)).to(dev)
        loss, ce, aux = loss_fn(rows[:, :-1], rows[:, 1:])
        loss.backward()
        norm = update_fn()
        opt.zero_grad(set_to_none=True)
        vals = torch.stack([loss, ce, aux, norm]).tolist()
        sync(dev)
        ms = (time.perf_counter() - t0) * 1e3
        rec = {"step": t + 1, **dict(zip(("loss", "ce", "aux", "grad_norm"), vals)), "ms": round(ms, 3)}
        print(json.dumps(rec), file=out, flush=True)
        print(f"step {t + 1}/{a.steps}  loss {vals[0]:.5f}  |g| {vals[3]:.4f}  {ms:.1f} ms", file=sys.stderr)


def cmd_generate(a):
    dev = device_of(a)
    cfg, glob, layers = load_model(a.model, dev)
    B, Pl, N = a.batch, a.prompt_len, a.new
    cap = Pl + N
    if cap > cfg["max_seq_len"]:
        die(f"--prompt-len + --new = {cap} exceeds max_seq_len {cfg['max_seq_len']}")
    model = MoETransformer(cfg, glob, layers, cap, dev)
    V, G, h = cfg["vocab_size"], cfg["n_kv_heads"], cfg["head_dim"]
    step = torch.compile(model.next_token) if a.compile else model.next_token

    def run():
        # each pass writes the cache positions it reads, so a rerun needs no reset
        sync(dev)
        t0 = time.perf_counter()
        tok = step(prompt, 0, caches)
        sync(dev)
        t1 = time.perf_counter()
        out = [tok]
        for i in range(N):
            tok = step(tok[:, None], Pl + i, caches)
            out.append(tok)
        sync(dev)
        return torch.stack(out, dim=1), (t1 - t0) * 1e3, time.perf_counter() - t1

    with torch.inference_mode():
        prompt = (torch.arange(Pl, device=dev)[None] * 7 + torch.arange(B, device=dev)[:, None]) % V
        caches = [tuple(torch.zeros(B, G, cap, h, device=dev) for _ in range(2)) for _ in layers]
        run()                                               # warm-up (and compilation)
        ids, prefill_ms, decode_s = run()
    print(" ".join(map(str, prompt[0].tolist() + ids[0].tolist())))
    print(json.dumps({"batch": B, "prompt_len": Pl, "new": N,
                      "decode_tokens_per_s": round(B * N / decode_s, 2), "prefill_ms": round(prefill_ms, 3)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t, g = sub.add_parser("train"), sub.add_parser("generate")
    for p in (t, g):
        p.add_argument("--model", required=True)
        p.add_argument("--batch", type=int, required=True)
        p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
        p.add_argument("--compile", action="store_true", help="torch.compile, default mode")
        p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (CUDANN_ALLOW_TF32=1's match)")
    t.add_argument("--data", required=True)
    t.add_argument("--seq", type=int, required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--lr", type=float, required=True)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--eps", type=float, default=1e-8)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--log")
    g.add_argument("--prompt-len", type=int, required=True)
    g.add_argument("--new", type=int, required=True)
    a = ap.parse_args()
    {"train": cmd_train, "generate": cmd_generate}[a.cmd](a)


if __name__ == "__main__":
    main()
