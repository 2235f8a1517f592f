"""Writes a small token file for the examples (little-endian int32 ids, the
format train_moe reads): a random walk in which each token has two likely
successors, so a model can learn it. Standard library only.

    python3 examples/make_data.py --vocab 1000 --tokens 50000 --out tokens.bin
"""
import argparse
import random
import struct


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.vocab < 2 or args.tokens < 2:
        parser.error("--vocab and --tokens must be at least 2")
    rng = random.Random(args.seed)
    successors = [(rng.randrange(args.vocab), rng.randrange(args.vocab)) for _ in range(args.vocab)]
    token, ids = 0, []
    for _ in range(args.tokens):
        ids.append(token)
        # Mostly one of the two successors; now and then anything (noise).
        token = rng.choice(successors[token]) if rng.random() < 0.95 else rng.randrange(args.vocab)
    with open(args.out, "wb") as f:
        f.write(struct.pack(f"<{len(ids)}i", *ids))


if __name__ == "__main__":
    main()
