"""Attribution patching (``features find``'s slowest stage): step-by-step integrated gradients vs batched steps.

``old`` is the path as first written (one forward and backward pass per alpha, each through every SAE,
no shared prefix; kept as the reference of ``tests/features/test_attribution.py``); ``new`` is
:func:`refusal_steer.features.attribution.attribute_batch` (``new:S`` runs S steps per pass, ``new:S:noshare``
without the shared prefix). All variants run in one process on the same model (the default one, float32,
CPU), the shipped default SAE band (layers 13-15), the first ``--batches`` x ``--batch-size`` AdvBench train
prompts ``features find`` uses, and one direction: a saved one (``--direction DIR``, a folder
``refusal-steer direction`` or the demo wrote), or else a seeded random unit vector (the time does not
depend on the direction). Variants alternate batch by batch, in a rotating order, so a change in the
machine's load hits them alike. Peak memory is the process's peak RSS during each call above its RSS
before the call (VmHWM reset through /proc/self/clear_refs), the largest over the batches. Printed:
seconds per batch (median), the old/new ratio, the projection for ``--project`` prompts, and the
largest difference between each variant's attributions and old's (relative to old's largest).

Run:
    PYTHONPATH=src python bench/bench_attribution.py --batches 2 --variants old,new:10
    PYTHONPATH=src python bench/bench_attribution.py --batches 2 --variants new:2,new:5,new:10,new:10:noshare
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="old,new", help="comma-separated: old, new, new:STEP_BATCH, new:STEP_BATCH:noshare")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--direction", default="", help="a saved direction folder (default: a seeded random unit vector)")
    parser.add_argument("--project", type=int, default=128, help="prompts to project the attribution time for")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from refusal_steer.data import load_dataset
    from refusal_steer.features.attribution import DEFAULT_STEP_BATCH, attribute_batch
    from refusal_steer.generation import encode_prompts
    from refusal_steer.models import load_model
    from refusal_steer.runs.features import _sae_names, load_saes
    from refusal_steer.sae.corpus import template_prefix_length
    from refusal_steer.sae.pretrained import default_band

    lm = load_model("default")
    saes = load_saes(default_band(), lm)
    points = _sae_names(saes)
    prompts = [r.prompt for r in load_dataset("advbench", split="train", limit=args.batches * args.batch_size, seed=0)]
    tokens = encode_prompts(lm, prompts)
    skip = template_prefix_length(lm)
    if args.direction:
        from refusal_steer.directions.io import load_ablation_direction

        direction = load_ablation_direction(args.direction).direction
        refusal_ids = [int(i) for i in json.loads((Path(args.direction) / "refusal_tokens.json").read_text())["token_ids"]]
    else:
        direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
        direction = direction / direction.norm()
        refusal_ids = sorted({lm.tokenizer.encode(t, add_special_tokens=False)[0] for t in ("I", "As", "Sorry")})
    sys.path.insert(0, str(ROOT))
    from tests.features.test_attribution import _step_by_step

    def runner(variant: str):
        name, _, rest = variant.partition(":")
        if name == "old":
            return lambda batch: _step_by_step(lm, saes, points, batch, direction, refusal_ids, steps=args.steps, skip_tokens=skip)
        step_batch, _, flag = rest.partition(":")
        return lambda batch: attribute_batch(lm, saes, points, batch, direction, refusal_ids, steps=args.steps, skip_tokens=skip,
                                             step_batch=int(step_batch or DEFAULT_STEP_BATCH), share_prefix=flag != "noshare")

    variants = args.variants.split(",")
    runs = {v: runner(v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, float] = {v: 0.0 for v in variants}
    parts: dict[str, list[dict[str, torch.Tensor]]] = {v: [] for v in variants}
    loads = []
    for i, start in enumerate(range(0, len(tokens), args.batch_size)):
        batch = tokens[start:start + args.batch_size]
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for variant in order:
            before = _rss_kib("VmRSS")
            _reset_peak()
            t0 = time.perf_counter()
            part = runs[variant](batch)
            times[variant].append(time.perf_counter() - t0)
            peaks[variant] = max(peaks[variant], (_rss_kib("VmHWM") - before) / 1024)
            parts[variant].append({k: v.detach().cpu() for k, v in part.items() if not k.startswith("_")})
            loads.append(os.getloadavg()[0])
            print(f"batch {i} {variant}: {times[variant][-1]:.1f} s", file=sys.stderr, flush=True)
    attributions = {v: {k: torch.cat([p[k] for p in ps]) for k in ps[0]} for v, ps in parts.items()}
    print(f"{args.batches} batches of {args.batch_size} AdvBench train prompts ({min(map(len, tokens))}-{max(map(len, tokens))} tokens, "
          f"{skip} of them the template prefix), {args.steps} IG steps, {len(saes)} shipped SAEs, {args.threads} threads, "
          f"1-min load {min(loads):.1f}-{max(loads):.1f}; model RSS {_rss_kib('VmRSS') / 1024:.0f} MiB")
    print(f"{'variant':<16} {'s/batch (median)':>17} {'all batches':>20} {'peak above MiB':>15} {f'{args.project} prompts':>12}")
    for variant in variants:
        median = statistics.median(times[variant])
        batches = ", ".join(f"{t:.1f}" for t in times[variant])
        projected = median * -(-args.project // args.batch_size) / 60
        print(f"{variant:<16} {median:>17.1f} {batches:>20} {peaks[variant]:>15.0f} {projected:>8.1f} min")
    reference = "old" if "old" in variants else variants[0]
    for variant in variants:
        if variant == reference:
            continue
        ratio = statistics.median(times[reference]) / statistics.median(times[variant])
        diff = max(float((attributions[variant][k] - attributions[reference][k]).abs().max() / attributions[reference][k].abs().max())
                   for k in attributions[reference])
        print(f"{reference}/{variant}: {ratio:.2f}x; largest difference {diff:.1e} of {reference}'s largest attribution")


if __name__ == "__main__":
    main()
