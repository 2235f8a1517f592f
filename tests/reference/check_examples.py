"""Checks the example programs (target/examples/train_moe, generate_moe) against
the independent JAX float64 implementation of MODEL.md (moe_reference.py) on
small models: every step's loss, the step-1 gradients, greedy tokens and the
logits of KV-cache decoding against full recomputation; generation with
bf16/f16 weights against the float32 run; plus sampling, the
--seed initialisation, and clear failures on bad files and arguments.

Run by `make test-examples` (after `make examples`); exits non-zero on any
mismatch."""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "examples")
REFERENCE = os.path.join(ROOT, "tests", "reference", "moe_reference.py")

TINY = {"vocab_size": 1000, "hidden_dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 1, "head_dim": 16, "ffn_dim": 256,
        "n_experts": 4, "top_k_experts": 2, "rope_base": 10000.0, "rms_eps": 1e-6, "aux_loss_alpha": 0.01, "max_seq_len": 512}
# Grouped-query attention (2 query heads per KV head), 8 experts, odd sizes.
GQA = dict(TINY, vocab_size=300, hidden_dim=48, n_layers=3, n_kv_heads=2, head_dim=8, ffn_dim=40, n_experts=8, max_seq_len=64)

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(args, expect_ok=True):
    result = subprocess.run(args, capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        sys.exit(f"command failed ({result.returncode}): {' '.join(args)}\n{result.stderr}")
    return result


def reference(*args):
    return run([sys.executable, REFERENCE, *args])


def example(name, *args, expect_ok=True):
    return run([os.path.join(BIN, name), *args], expect_ok)


def make_model(work, config, name, tokens):
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(config, f)
    model = os.path.join(work, name)
    reference("init", "--config", path, "--seed", "0", "--out", model)
    data = os.path.join(work, name + ".bin")
    reference("data", "--vocab", str(config["vocab_size"]), "--tokens", str(tokens), "--seed", "1", "--out", data)
    return path, model, data


def compare_training(work, name, model, data, batch, seq, steps):
    common = ["--model", model, "--data", data, "--batch", str(batch), "--seq", str(seq), "--steps", str(steps), "--lr", "2e-3",
              "--weight-decay", "0.01", "--clip", "1.0"]
    out = {who: os.path.join(work, f"{name}-{who}") for who in ("c", "ref")}
    example("train_moe", *common, "--log", out["c"] + ".jsonl", "--grads", out["c"] + "-grads.safetensors", "--save", out["c"] + "-trained")
    reference("train", *common, "--log", out["ref"] + ".jsonl", "--grads", out["ref"] + "-grads.safetensors")
    logs = {who: [json.loads(line) for line in open(path + ".jsonl")] for who, path in out.items()}
    check(len(logs["c"]) == steps and all("ms" in row for row in logs["c"]), f"{name}: one log line per step, with ms")
    worst = max(abs(c["loss"] - r["loss"]) / abs(r["loss"]) for c, r in zip(logs["c"], logs["ref"]))
    check(worst <= 2e-4, f"{name}: losses of {steps} steps within 2e-4 relative (worst {worst:.2e})")
    worst_norm = max(abs(c["grad_norm"] - r["grad_norm"]) / r["grad_norm"] for c, r in zip(logs["c"], logs["ref"]))
    check(worst_norm <= 1e-4, f"{name}: gradient norms within 1e-4 relative (worst {worst_norm:.2e})")
    ours, theirs = load_file(out["c"] + "-grads.safetensors"), load_file(out["ref"] + "-grads.safetensors")
    check(sorted(ours) == sorted(theirs), f"{name}: the gradient file names every tensor ({len(ours)})")
    errors = {k: np.linalg.norm(ours[k].astype(np.float64) - theirs[k]) / max(np.linalg.norm(theirs[k]), 1e-30) for k in theirs}
    name_worst = max(errors, key=errors.get)
    check(errors[name_worst] <= 1e-4, f"{name}: step-1 gradients within 1e-4 relative L2 per tensor (worst {errors[name_worst]:.2e}, {name_worst})")
    return out["c"] + "-trained"


def compare_generation(work, name, model, prompt, new):
    c_logits, r_logits = os.path.join(work, name + "-c.logits"), os.path.join(work, name + "-ref.logits")
    ours = example("generate_moe", "--model", model, "--prompt", prompt, "--max-new", str(new), "--logits", c_logits).stdout.split()
    theirs = reference("generate", "--model", model, "--prompt", prompt, "--max-new", str(new), "--logits", r_logits).stdout.split()
    check(ours == theirs, f"{name}: greedy generation identical ({' '.join(ours)})")
    a, b = np.fromfile(c_logits, np.float32), np.fromfile(r_logits, np.float32)
    err = float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max()) if a.shape == b.shape else math.inf
    check(err <= 1e-5, f"{name}: KV-cache decoding logits equal full recomputation's (max error {err:.1e} of the largest)")


def bf16_bits(x):
    """float32 to bfloat16 bits, rounded to nearest even (on the bits, independently of the library; no NaNs here)."""
    b = x.astype(np.float32).ravel().view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def save_bf16(tensors, path):
    """A safetensors file of BF16 tensors, written by hand: header length, JSON header, data."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        data = bf16_bits(tensors[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


# Stated tolerances of generate_moe --dtype against the float32 run: the largest
# logit difference relative to the largest logit.
HALF_TOLERANCE = {"bf16": 2e-2, "f16": 4e-3}


def check_half_generation(work, model):
    half = os.path.join(work, "bf16-checkpoint")
    os.makedirs(half, exist_ok=True)
    shutil.copy(os.path.join(model, "config.json"), half)
    save_bf16(load_file(os.path.join(model, "model.safetensors")), os.path.join(half, "model.safetensors"))
    for i, prompt in enumerate(["1 2 3 4 5", "42", "7 7 7 900 13 2 500 64"]):
        def generate(model_dir, dtype):
            path = os.path.join(work, f"half-{i}-{dtype}-{os.path.basename(model_dir)}.logits")
            ids = example("generate_moe", "--model", model_dir, "--prompt", prompt, "--max-new", "12", "--dtype", dtype, "--logits", path).stdout.split()
            return ids, np.fromfile(path, np.float32)
        ids, logits = generate(model, "f32")
        for dtype, tolerance in HALF_TOLERANCE.items():
            half_ids, half_logits = generate(model, dtype)
            err = float(np.abs(half_logits.astype(np.float64) - logits).max() / np.abs(logits).max())
            check(half_ids == ids and err <= tolerance,
                  f"--dtype {dtype}, prompt {i}: greedy tokens as float32's, logits within {tolerance:g} of the largest (measured {err:.1e})")
        from_file = generate(half, "bf16")
        converted = generate(model, "bf16")
        check(from_file[0] == converted[0] and np.array_equal(from_file[1], converted[1]),
              f"a BF16 checkpoint, prompt {i}: the same tokens and logits as a float32 one converted on load")


def check_sampling(model, vocab):
    runs = {}
    for option in (["--temperature", "0.8"], ["--temperature", "1.0", "--top-k", "5"], ["--temperature", "0.7", "--top-p", "0.9"]):
        args = ["--model", model, "--prompt", "3 1 4", "--max-new", "6", "--seed", "11", *option]
        first, second = example("generate_moe", *args).stdout.split(), example("generate_moe", *args).stdout.split()
        ids = [int(t) for t in first]
        runs[" ".join(option)] = first
        check(first == second and len(ids) == 9 and all(0 <= t < vocab for t in ids) and ids[:3] == [3, 1, 4],
              f"sampling {' '.join(option)}: 6 ids in the vocabulary, the same for the same seed")
        # Rows decoded together draw what one row alone draws.
        batched = example("generate_moe", *args, "--batch", "3").stdout.split()
        check(batched == first, f"sampling {' '.join(option)} --batch 3: row 0 equals the one-row run")


def check_seed_init(work, config_path, data):
    # lr 0 leaves the fresh weights as they were drawn.
    saved = os.path.join(work, "seeded")
    example("train_moe", "--config", config_path, "--seed", "5", "--data", data, "--batch", "1", "--seq", "8", "--steps", "1", "--lr", "0",
            "--save", saved)
    w = load_file(os.path.join(saved, "model.safetensors"))
    matrices = np.concatenate([v.ravel() for k, v in w.items() if v.ndim == 2])
    norms = np.concatenate([v.ravel() for k, v in w.items() if v.ndim == 1])
    check(abs(matrices.std() - 0.02) < 5e-4 and abs(matrices.mean()) < 5e-4 and np.all(norms == 1.0),
          f"--seed: weights normal(0, 0.02) (std {matrices.std():.5f}), norms 1")
    with open(os.path.join(saved, "config.json")) as f:
        check(json.load(f) == json.load(open(config_path)), "--save writes config.json beside the weights")


def check_bad_input(work, model, data, config):
    broken = os.path.join(work, "broken")
    os.makedirs(broken, exist_ok=True)
    shutil.copy(os.path.join(model, "config.json"), broken)
    raw = open(os.path.join(model, "model.safetensors"), "rb").read()
    with open(os.path.join(broken, "model.safetensors"), "wb") as f:
        f.write(raw[:-100])
    mismatch = os.path.join(work, "mismatch")
    os.makedirs(mismatch, exist_ok=True)
    shutil.copy(os.path.join(model, "model.safetensors"), mismatch)
    with open(os.path.join(mismatch, "config.json"), "w") as f:
        json.dump(dict(config, hidden_dim=32), f)
    out_of_vocab = os.path.join(work, "oov.bin")
    np.array([1, 2, config["vocab_size"], 3] * 50, dtype="<i4").tofile(out_of_vocab)
    def train(model_dir, data_file=data, seq="8"):
        return ["--model", model_dir, "--data", data_file, "--batch", "1", "--seq", seq, "--steps", "1", "--lr", "1e-3"]

    cases = [
        ("train_moe", train(broken), "not a valid safetensors file"),
        ("train_moe", train(mismatch), "the config wants"),
        ("train_moe", train(model, out_of_vocab), "outside the vocabulary"),
        ("train_moe", train(model, os.path.join(work, "missing.bin")), "cannot open"),
        ("train_moe", train(model, seq="600"), "exceeds the model's max_seq_len"),
        ("train_moe", ["--model", model, "--data", data], "usage"),
        ("train_moe", ["--model", model, "--data", data, "--batch", "2", "--seq", "8", "--steps", "1", "--lr", "1e-3", "--ranks", "2"], "needs --nccl-id FILE"),
        ("train_moe", train(model) + ["--ranks", "2", "--rank", "2", "--nccl-id", os.path.join(work, "id")], "--rank must be in [0, --ranks = 2)"),
        ("train_moe", train(model) + ["--ranks", "2", "--nccl-id", os.path.join(work, "id")], "must be a multiple of --ranks"),
        # Here (no NCCL, or no GPU) an id serves one rank only: two ranks are refused with the reason.
        ("train_moe", ["--model", model, "--data", data, "--batch", "2", "--seq", "8", "--steps", "1", "--lr", "1e-3",
                       "--ranks", "2", "--rank", "0", "--nccl-id", os.path.join(work, "id2")], "one rank only"),
        ("generate_moe", ["--model", model, "--prompt", "1 2 99999", "--max-new", "2"], "outside the vocabulary"),
        ("generate_moe", ["--model", broken, "--prompt", "1", "--max-new", "2"], "not a valid safetensors file"),
        ("generate_moe", ["--model", model, "--prompt", "1 x", "--max-new", "2"], "not a list of token ids"),
        ("generate_moe", ["--model", model, "--prompt", "1", "--max-new", "2", "--dtype", "f64"], "--dtype must be f32, bf16 or f16"),
        ("generate_moe", ["--model", model, "--prompt", "1", "--max-new", "2", "--batch", "0"], "--batch must be in [1, 4096]"),
    ]
    for program, args, fragment in cases:
        result = example(program, *args, expect_ok=False)
        check(result.returncode == 1 and fragment in result.stderr, f"{program} refuses with '{fragment}' (exit {result.returncode}: {result.stderr.strip()[:90]})")


def main():
    work = tempfile.mkdtemp(prefix="cudann-examples-")
    try:
        config_path, model, data = make_model(work, TINY, "tiny", 20000)
        trained = compare_training(work, "tiny", model, data, batch=2, seq=32, steps=30)
        compare_generation(work, "tiny", trained, "1 2 3 4 5", 12)
        _, gqa_model, gqa_data = make_model(work, GQA, "gqa", 3000)
        gqa_trained = compare_training(work, "gqa", gqa_model, gqa_data, batch=3, seq=17, steps=5)
        compare_generation(work, "gqa", gqa_trained, "7", 20)
        check_half_generation(work, trained)
        check_sampling(trained, TINY["vocab_size"])
        check_seed_init(work, config_path, data)
        check_bad_input(work, model, data, TINY)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"examples: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
