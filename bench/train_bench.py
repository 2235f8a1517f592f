"""Training-step benchmark: examples/train_moe (C, every op a cudann call)
against the same step in JAX (`jit`, float32: tests/reference/moe_reference.py
bench), both measured in this run on this machine, from the same checkpoint
and data.

    make examples && python3 bench/train_bench.py [--steps 20]

Prints each side's median milliseconds per step (the first step, which
includes JAX's compilation and the library's warm-up, is left out) and the
ratio JAX / cudann (above 1: cudann is faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "tests", "reference", "moe_reference.py")
TRAIN = os.path.join(ROOT, "target", "examples", "train_moe")

# MoE issue's configuration "larger than tiny".
CONFIG = {"vocab_size": 4096, "hidden_dim": 256, "n_layers": 4, "n_heads": 8, "n_kv_heads": 2, "head_dim": 32,
          "ffn_dim": 512, "n_experts": 8, "top_k_experts": 2, "rope_base": 10000.0, "rms_eps": 1e-6,
          "aux_loss_alpha": 0.01, "max_seq_len": 512}


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cudann-train-bench-") as work:
        config = os.path.join(work, "config.json")
        with open(config, "w") as f:
            json.dump(CONFIG, f)
        model, data, log = os.path.join(work, "model"), os.path.join(work, "tokens.bin"), os.path.join(work, "log.jsonl")
        run(sys.executable, REFERENCE, "init", "--config", config, "--seed", "0", "--out", model)
        run(sys.executable, REFERENCE, "data", "--vocab", str(CONFIG["vocab_size"]), "--tokens", "400000", "--seed", "1", "--out", data)
        step = ["--model", model, "--data", data, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps + 1), "--lr", "1e-3"]
        run(TRAIN, *step, "--log", log)
        ours = statistics.median(json.loads(line)["ms"] for line in list(open(log))[1:])
        jax = json.loads(run(sys.executable, REFERENCE, "bench", *step).strip().splitlines()[-1])
        theirs = statistics.median(jax["ms_all"])
    size = ", ".join(f"{k} {v}" for k, v in CONFIG.items() if k not in ("rope_base", "rms_eps", "aux_loss_alpha", "max_seq_len"))
    print(f"# train step, batch {args.batch} x seq {args.seq}; {size}; {os.cpu_count()} cores; median of {args.steps} steps")
    print(f"train_moe (cudann) {ours:8.1f} ms/step")
    print(f"JAX jit float32    {theirs:8.1f} ms/step")
    print(f"ratio JAX / cudann {theirs / ours:8.2f}x")


if __name__ == "__main__":
    main()
