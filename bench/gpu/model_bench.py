"""The whole model on the GPU: examples/train_moe (every op a cudann call, all
tensors in cudann_malloc memory) against the same training step in PyTorch
eager and torch.compile (bench/gpu/torch_moe.py), and examples/generate_moe
against PyTorch greedy decoding with a static KV cache, all in this run on
this GPU, from the same checkpoint and data.

    python3 bench/gpu/model_bench.py --bin DIR [--steps 25] [--only train|generate]
                                     [--device cuda|cpu] [--prompt 3968]

DIR holds the built train_moe and generate_moe. Configurations: the GPU
issue's larger one (hidden 256, 4 layers, 8 heads, 2 KV heads, head 32, ffn
512, 8 experts top-2, vocab 4096; batch 8 x seq 128) and one 4x wider (hidden
1024, head 128, ffn 2048). Prints median ms per training step (the first 5
steps, which hold compilation and warm-up, left out) and decoding tokens/s at
batch 1 and 32 with a 4096-token cache (prompt 3968 tokens, 128 new).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCH_MOE = os.path.join(ROOT, "bench", "gpu", "torch_moe.py")
LARGER = {"vocab_size": 4096, "hidden_dim": 256, "n_layers": 4, "n_heads": 8, "n_kv_heads": 2, "head_dim": 32,
          "ffn_dim": 512, "n_experts": 8, "top_k_experts": 2, "rope_base": 10000.0, "rms_eps": 1e-6,
          "aux_loss_alpha": 0.01, "max_seq_len": 4096}
WIDER = dict(LARGER, hidden_dim=1024, head_dim=128, ffn_dim=2048)
NEW = 128


def run(*args, env=None):
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"model_bench: {' '.join(args[:3])} failed:\n{result.stderr[-2000:]}")
    return result


def backend(device):
    return dict(os.environ, CUDANN_BACKEND=device)


def median_ms(log):
    rows = [json.loads(line) for line in open(log)]
    return statistics.median(r["ms"] for r in rows[5:]), rows


def train(args, work, name):
    model, data = os.path.join(work, name), os.path.join(work, "tokens.bin")
    step = ["--model", model, "--data", data, "--batch", "8", "--seq", "128", "--steps", str(args.steps), "--lr", "1e-3"]
    sides = {}
    log = os.path.join(work, f"{name}-cudann.jsonl")
    run(os.path.join(args.bin, "train_moe"), *step, "--log", log, env=backend(args.device))
    sides["cudann"] = median_ms(log)
    for label, extra in (("torch eager", []), ("torch.compile", ["--compile"])):
        log = os.path.join(work, f"{name}-{label.replace(' ', '-')}.jsonl")
        run(sys.executable, TORCH_MOE, "train", *step, "--device", args.device, "--log", log, *extra)
        sides[label] = median_ms(log)
    first = {label: rows[0]["loss"] for label, (_, rows) in sides.items()}
    last = {label: rows[-1]["loss"] for label, (_, rows) in sides.items()}
    ours = sides["cudann"][0]
    print(f"train {name}: batch 8 x 128, median ms/step: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in sides.items()) +
          f"; eager/cudann {sides['torch eager'][0] / ours:.2f}x, compile/cudann {sides['torch.compile'][0] / ours:.2f}x")
    print(f"  loss step 1: {first}; step {args.steps}: {last}")


def generate(args, work, name, config):
    model = os.path.join(work, name)
    prompt = " ".join(str(7 * i % config["vocab_size"]) for i in range(args.prompt))
    for batch in (1, 32):
        ours = run(os.path.join(args.bin, "generate_moe"), "--model", model, "--prompt", prompt, "--max-new", str(NEW + 1),
                   "--batch", str(batch), env=backend(args.device))
        speed = float(ours.stderr.split(":")[-1].split()[0])
        theirs = run(sys.executable, TORCH_MOE, "generate", "--model", model, "--batch", str(batch), "--prompt-len", str(args.prompt),
                     "--new", str(NEW), "--device", args.device)
        report = json.loads(theirs.stdout.strip().splitlines()[-1])
        same = ours.stdout.split()[args.prompt:] == theirs.stdout.strip().splitlines()[0].split()[args.prompt:]
        print(f"generate {name} batch {batch}, cache {args.prompt + NEW}: cudann {speed:.0f} tokens/s, torch (static cache) "
              f"{report['decode_tokens_per_s']:.0f} tokens/s, cudann/torch {speed / report['decode_tokens_per_s']:.2f}x; "
              f"greedy tokens {'equal' if same else 'DIFFER'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="directory of the built train_moe and generate_moe")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--only", choices=("train", "generate"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--prompt", type=int, default=4096 - NEW - 1, help="prompt tokens (the cache holds them and the new ones)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cudann-model-bench-") as work:
        run(sys.executable, os.path.join(ROOT, "examples", "make_data.py"), "--vocab", str(LARGER["vocab_size"]), "--tokens", "400000",
            "--out", os.path.join(work, "tokens.bin"))
        for name, config in (("larger", LARGER), ("wider", WIDER)):
            path = os.path.join(work, f"{name}.json")
            with open(path, "w") as f:
                json.dump(config, f)
            # A fresh checkpoint: one step at learning rate 0 saves the drawn weights.
            run(os.path.join(args.bin, "train_moe"), "--config", path, "--seed", "0", "--data", os.path.join(work, "tokens.bin"),
                "--batch", "1", "--seq", "8", "--steps", "1", "--lr", "0", "--save", os.path.join(work, name), env=backend(args.device))
            if args.only != "generate":
                train(args, work, name)
            if args.only != "train":
                generate(args, work, name, config)


if __name__ == "__main__":
    main()
