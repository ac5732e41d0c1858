"""SAE training throughput and peak memory: refusal-steer's TopK trainer vs SAELens and sparsify.

Every tool trains a TopK SAE (k=32) on the same random float32 activations (d_in=896, batch 4096)
for a few full optimizer steps (forward, loss, backward, optimizer step, decoder renormalisation).
Each (tool, width) runs in its own subprocess, so peak memory (max RSS growth during the timed
steps) is per tool; tools are interleaved over repeats, and ratios come from medians of one run.

* refusal-steer: ``train_sae`` itself (shuffle buffer of one batch, fused Adam, sparse kernels).
* SAELens: ``TopKTrainingSAE.training_forward_pass`` + the body of ``SAETrainer._train_step``
  (backward, grad-norm clip 1.0, ``torch.optim.Adam``), default config.
* sparsify: ``SparseCoder`` forward/backward as in ``sparsify.Trainer`` (decoder renorm, gradient
  projection, FVU loss) with ``torch.optim.Adam`` (sparsify's default optimizer is signum; Adam keeps
  the comparison on the same optimizer).

No latent is dead within the timed steps for any tool, so no AuxK work is timed.

Run:  PYTHONPATH=src /tmp/benchenv/bin/python bench/bench_sae_training.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

D_IN, K, BATCH = 896, 32, 4096


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data(n_batches: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, D_IN, generator=g) for _ in range(n_batches)]


def worker(tool: str, width: int, warmup: int, steps: int) -> dict:
    import torch

    torch.manual_seed(0)
    data = _data(warmup + steps)
    times: list[float] = []
    if tool == "refusal_steer":
        from refusal_steer.sae import TopKConfig, TrainConfig, build_sae, train_sae

        sae = build_sae(TopKConfig(d_in=D_IN, d_sae=width, k=K))
        cfg = TrainConfig(tokens=BATCH * (warmup + steps), batch_size=BATCH, buffer_batches=1, log_every=1, progress=False, lr=2e-4)
        base = _rss_mb()
        res = train_sae(sae, data, cfg)
        times = [BATCH / h["tokens_per_s"] for h in res.history[warmup:]]
    else:
        if tool == "saelens":
            from sae_lens.saes.sae import TrainStepInput
            from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=width, k=K))
            opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
            dead = torch.zeros(width, dtype=torch.bool)

            def step(x, i):
                out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=i, is_logging_step=False))
                with torch.no_grad():
                    fired = out.feature_acts.bool().float().sum(-2).bool()
                    dead[fired] = False
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
                opt.step()
                opt.zero_grad()

        elif tool == "sparsify":
            from sparsify import SparseCoder, SparseCoderConfig

            sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=width, k=K))
            opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
            since = torch.zeros(width, dtype=torch.long)

            def step(x, i):
                sae.set_decoder_norm_to_unit_norm()
                out = sae(x, dead_mask=None)
                since.add_(x.shape[0])
                since[out.latent_indices.flatten()] = 0
                out.fvu.backward()
                sae.remove_gradient_parallel_to_decoder_directions()
                opt.step()
                opt.zero_grad()

        else:
            raise ValueError(tool)
        base = _rss_mb()
        sae.train()
        for i, x in enumerate(data):
            t = time.perf_counter()
            step(x, i)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return {
        "tool": tool,
        "width": width,
        "step_s": statistics.median(times),
        "acts_per_s": BATCH / statistics.median(times),
        "peak_rss_mb": _peak_mb(),
        "peak_growth_mb": _peak_mb() - base,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "WIDTH"))
    ap.add_argument("--widths", default="8192,16384")
    ap.add_argument("--tools", default="refusal_steer,saelens,sparsify")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None, help="write all results here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.warmup, args.steps)))
        return

    import torch

    versions = {"torch": torch.__version__}
    for mod, name in (("sae_lens", "sae-lens"), ("sparsify", "eai-sparsify")):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001
            versions[name] = "missing"
    print(f"# versions: {versions}; torch threads {torch.get_num_threads()}", flush=True)
    results: list[dict] = []
    for width in (int(w) for w in args.widths.split(",")):
        for rep in range(args.repeats):
            for tool in args.tools.split(","):
                cmd = [sys.executable, __file__, "--worker", tool, str(width), "--warmup", str(args.warmup), "--steps", str(args.steps)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"# {tool} width {width} failed:\n{proc.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["repeat"] = rep
                results.append(r)
                print(f"{tool:14s} width {width:6d} rep {rep}: {r['acts_per_s']:9.0f} acts/s  step {r['step_s']:.3f}s  peak RSS {r['peak_rss_mb']:.0f} MB (+{r['peak_growth_mb']:.0f} MB during steps)", flush=True)
    print("\n| width | tool | activations/s (median) | peak RSS MB | RSS growth in steps MB | ours / tool |")
    print("|---|---|---|---|---|---|")
    for width in sorted({r["width"] for r in results}):
        med = {}
        for tool in args.tools.split(","):
            rs = [r for r in results if r["tool"] == tool and r["width"] == width]
            if rs:
                med[tool] = (statistics.median(r["acts_per_s"] for r in rs), max(r["peak_rss_mb"] for r in rs), max(r["peak_growth_mb"] for r in rs))
        ours = med.get("refusal_steer", (float("nan"),))[0]
        for tool, (aps, peak, growth) in med.items():
            print(f"| {width} | {tool} | {aps:.0f} | {peak:.0f} | {growth:.0f} | {ours / aps:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
