"""Attribution patching (``features find``'s slowest stage): step-by-step integrated gradients vs batched steps.

``old`` is the path as first written (one forward and backward pass per alpha, each through every SAE;
kept as the reference of ``tests/features/test_attribution.py``); ``new`` is
:func:`refusal_steer.features.attribution.attribute_batch`, ``--step-batch`` steps per pass. Both run on
the same model (the default one, float32, CPU), the shipped default SAE band, the first ``--batches`` x
``--batch-size`` AdvBench train prompts ``features find`` uses, and the same direction: a saved one
(``--direction DIR``, a folder ``refusal-steer direction`` or the demo wrote), or else a seeded random
unit vector (the time does not depend on the direction). Each variant runs in its own subprocess; peak
memory is that process's peak RSS during the attribution loop (VmHWM reset after loading). The parent
prints seconds per batch (median), the old/new ratio, the projection for ``--project`` prompts and the
largest difference between the two attributions (relative to the largest attribution).

Run:
    PYTHONPATH=src python bench/bench_attribution.py --batches 2 --step-batch 10
    PYTHONPATH=src python bench/bench_attribution.py --variants new:1,new:5,new:10 --batches 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


def child(variant: str, args: argparse.Namespace, out_file: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    from refusal_steer.data import load_dataset
    from refusal_steer.features.attribution import attribute_batch
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
    name, _, step_batch = variant.partition(":")
    if name == "old":
        sys.path.insert(0, str(ROOT))
        from tests.features.test_attribution import _step_by_step

        def run(batch):
            return _step_by_step(lm, saes, points, batch, direction, refusal_ids, steps=args.steps, skip_tokens=skip)
    else:
        def run(batch):
            return attribute_batch(lm, saes, points, batch, direction, refusal_ids, steps=args.steps, skip_tokens=skip,
                                   step_batch=int(step_batch or args.step_batch))
    _reset_peak()
    start_rss = _rss_kib("VmRSS")
    times, parts = [], []
    for start in range(0, len(tokens), args.batch_size):
        t0 = time.perf_counter()
        part = run(tokens[start:start + args.batch_size])
        times.append(time.perf_counter() - t0)
        parts.append({k: v.detach().cpu() for k, v in part.items() if not k.startswith("_")})
    save_file({k: torch.cat([p[k] for p in parts]).contiguous() for k in parts[0]}, str(out_file))
    return {"variant": variant, "seconds_per_batch": times, "peak_rss_mib": _rss_kib("VmHWM") / 1024, "rss_before_mib": start_rss / 1024,
            "tokens": [len(t) for t in tokens], "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="old,new", help="comma-separated: old, new, new:STEP_BATCH")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--direction", default="", help="a saved direction folder (default: a seeded random unit vector)")
    parser.add_argument("--project", type=int, default=128, help="prompts to project the attribution time for")
    parser.add_argument("--child", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args, Path(args.out))))
        return
    from safetensors.torch import load_file

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            out = Path(tmp) / f"{variant.replace(':', '_')}.safetensors"
            cmd = [sys.executable, __file__, "--child", variant, "--out", str(out), "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--step-batch", str(args.step_batch),
                   "--threads", str(args.threads), "--direction", args.direction]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"{variant} failed")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["attribution"] = load_file(str(out))
            results[variant] = result
    first = results[args.variants.split(",")[0]]
    print(f"{args.batches} batches of {args.batch_size} AdvBench train prompts ({min(first['tokens'])}-{max(first['tokens'])} tokens), "
          f"{args.steps} IG steps, 3 shipped SAEs, {args.threads} threads")
    print(f"{'variant':<10} {'s/batch (median)':>17} {'all batches':>24} {'peak RSS MiB':>13} {'load':>5} {f'{args.project} prompts':>12}")
    for variant, r in results.items():
        median = statistics.median(r["seconds_per_batch"])
        batches = ", ".join(f"{t:.1f}" for t in r["seconds_per_batch"])
        projected = median * -(-args.project // args.batch_size) / 60
        print(f"{variant:<10} {median:>17.1f} {batches:>24} {r['peak_rss_mib']:>13.0f} {r['load']:>5.1f} {projected:>9.1f} min")
    if "old" in results:
        old = results["old"]
        for variant, r in results.items():
            if variant == "old":
                continue
            ratio = statistics.median(old["seconds_per_batch"]) / statistics.median(r["seconds_per_batch"])
            diff = max(float((r["attribution"][k] - old["attribution"][k]).abs().max() / old["attribution"][k].abs().max().clamp_min(1e-30))
                       for k in old["attribution"])
            print(f"old/{variant}: {ratio:.2f}x faster; largest difference {diff:.2e} of the largest attribution")


if __name__ == "__main__":
    main()
