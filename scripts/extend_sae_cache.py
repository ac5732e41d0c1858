"""Grow a cached SAE token mix without recomputing what is already cached.

``refusal-steer sae train --model M --cache-tokens N`` caches the first N tokens of the seeded train
mix. The mix for a larger N starts with the same sequences (each source is taken in one seeded
order), so this script builds the larger mix, drops the sequences the existing cache already holds,
caches only the new ones, and links both sets of shards into one directory for
``sae train --activations``:

    python scripts/extend_sae_cache.py --model default --point resid_pre.14 \
        --have runs/sae/topk-L14/activations --have-tokens 200000 --tokens 600000 \
        --new runs/sae/mix-extra/activations --combined runs/sae/mix-600k
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
    parser.add_argument("--point", required=True, help="hook point(s) to cache, comma-separated")
    parser.add_argument("--have", type=Path, required=True, help="the existing cache directory")
    parser.add_argument("--have-tokens", type=int, required=True, help="the --cache-tokens it was made with")
    parser.add_argument("--tokens", type=int, required=True, help="token budget of the grown mix")
    parser.add_argument("--new", type=Path, required=True, help="where to cache the new sequences")
    parser.add_argument("--combined", type=Path, required=True, help="directory of links to every shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    lm = load_model(args.model)
    have, skip = mix_token_lists(lm, args.have_tokens, split="train", seed=args.seed)
    grown, _ = mix_token_lists(lm, args.tokens, split="train", seed=args.seed)
    cached = {tuple(t) for t in have}
    new = [t for t in grown if tuple(t) not in cached]
    missing = len(cached - {tuple(t) for t in grown})
    print(f"{len(grown)} sequences in the grown mix, {len(grown) - len(new)} already cached, {len(new)} new "
          f"({sum(len(t) - skip for t in new)} tokens past the {skip}-token prefix); {missing} cached ones not in the grown mix")
    cache_token_activations(lm, new, args.point, args.new, skip_tokens=skip, shard_size=256, batch_size=args.batch_size,
                            source=f"sae-mix:train:extend:{args.have_tokens}->{args.tokens}")
    args.combined.mkdir(parents=True, exist_ok=True)
    for tag, directory in (("a", args.have), ("b", args.new)):
        for shard in sorted(directory.glob("shard-*.safetensors")):
            link = args.combined / f"{tag}-{shard.name}"
            if not link.exists():
                link.symlink_to(shard.resolve())
    print(f"linked shards into {args.combined}")


if __name__ == "__main__":
    main()
