"""Copy a trained SAE into the package as bf16 safetensors, with its training record, metrics and command.

Run once to ship the weights, evaluate the shipped (bf16) SAE, then again with its metrics:
    python scripts/ship_sae.py runs/sae/topk-L14 --command "refusal-steer sae train ..." --name default-resid_pre.14-topk-8192
    refusal-steer sae eval --model default --sae default --json > runs/sae/shipped-metrics.json
    python scripts/ship_sae.py runs/sae/topk-L14 --command "..." --name ... --metrics runs/sae/shipped-metrics.json

--heldout adds a reconstruction-only eval on the cached 20k held-out tokens (keys prefixed heldout20k_).
Passing the shipped folder itself as sae_dir only rewrites metrics.json and README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1] / "src" / "refusal_steer" / "sae" / "pretrained_weights"
BF16_TENSORS = ("W_enc", "W_dec")  # the matrices; biases, norm scale and thresholds stay float32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae_dir", type=Path)
    parser.add_argument("--metrics", type=Path, default=None, help="JSON from sae eval of the shipped weights")
    parser.add_argument("--heldout", type=Path, default=None, help="JSON from sae eval --activations runs/sae/heldout-20k")
    parser.add_argument("--command", required=True, help="the exact command that trained it")
    parser.add_argument("--eval-command", default="refusal-steer sae eval --model default --sae default --json")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    out = ROOT / args.name
    out.mkdir(parents=True, exist_ok=True)
    if args.sae_dir.resolve() != out.resolve():
        tensors = load_file(str(args.sae_dir / "sae_weights.safetensors"))
        shipped = {k: (v.to(torch.bfloat16) if k in BF16_TENSORS else v.float()).contiguous() for k, v in tensors.items()}
        save_file(shipped, str(out / "sae_weights.safetensors"), metadata={"format": "refusal-steer/sae", "shipped_dtype": "bfloat16"})
        shutil.copy(args.sae_dir / "cfg.json", out / "cfg.json")
        training = json.loads((args.sae_dir / "training.json").read_text())
        training.pop("history", None)  # keep the package small; the summary stays
        (out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    metrics = json.loads(args.metrics.read_text()) if args.metrics else {}
    if args.heldout:
        metrics.update({f"heldout20k_{k}": v for k, v in json.loads(args.heldout.read_text()).items()})
    if metrics:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    (out / "README.md").write_text(
        f"# {args.name}\n\nTrained with:\n\n```\n{args.command}\n```\n\nHeld-out metrics (bf16 weights as shipped), from:\n\n"
        f"```\n{args.eval_command}\n```\n\n| metric | value |\n|---|---|\n{rows}\n"
    )
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
