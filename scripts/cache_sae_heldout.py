"""Cache held-out (test-split) SAE mix activations once, so several SAEs are compared on the same tokens.

    python scripts/cache_sae_heldout.py --model default --point resid_pre.14 --tokens 20000 --out runs/sae/heldout-20k
    refusal-steer sae eval --sae default --activations runs/sae/heldout-20k --point resid_pre.14 --json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refusal_steer.activations import cache_token_activations
from refusal_steer.models import load_model
from refusal_steer.sae.corpus import mix_token_lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--point", required=True, help="hook point(s), comma-separated")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lm = load_model(args.model)
    sequences, skip = mix_token_lists(lm, args.tokens, split="test", seed=args.seed)
    manifest = cache_token_activations(lm, sequences, args.point, args.out, skip_tokens=skip, shard_size=256, source="sae-mix:test")
    print(f"{len(sequences)} test sequences, {manifest['rows']} tokens past the {skip}-token prefix -> {args.out}")


if __name__ == "__main__":
    main()
