"""``refusal-steer harden``: gated hardening steers against jailbreaks, with what they cost."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, print_json


@app.command("harden")
def harden(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    direction: Path = typer.Option(..., "--direction", help="Direction folder (OUT/direction of the demo or 'refusal-steer direction')."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder HDIR (harden.json, pareto.png, harden.md, steer.yaml; resumes)."),
    features: Path = typer.Option(None, "--features", help="Features folder of 'refusal-steer features find' (latents-high, obrien)."),
    heads: Path = typer.Option(None, "--heads", help="Heads folder of 'refusal-steer heads' (heads-N; ranked here when missing)."),
    steers: str = typer.Option(None, help="Comma-separated hardening steers: actadd, latents-high, obrien, heads-N (default: all, heads 8/16/32/64)."),
    attacks: str = typer.Option("templates,many-shot,suffix", help="Single-turn attack families run on the test goals."),
    shots: int = typer.Option(None, "--shots", help="many-shot: example pairs per goal (default 16, about 4,500 tokens a goal; 4 is about 1,200, far cheaper on a CPU)."),
    crescendo: Path = typer.Option(None, "--crescendo", help="Transcripts JSONL of 'attack --attack crescendo', replayed under every steer."),
    limit: int = typer.Option(None, help="Test goals per attack family (default 100; --quick 20)."),
    trials: int = typer.Option(None, help="Optuna trials per family for the strength (default 6; --quick 3)."),
    mmlu: int = typer.Option(None, help="MMLU questions (default 500; 0: skip)."),
    arc: int = typer.Option(None, help="ARC-Challenge questions (default 100; 0: skip)."),
    gsm8k: int = typer.Option(None, help="GSM8K problems (default 100; 0: skip)."),
    no_ungated: bool = typer.Option(False, "--gated-only", help="Measure only the gated steers (and the baseline)."),
    quick: bool = typer.Option(False, "--quick", help="A small preset: 3 steers, 20 goals per attack, 3 trials, MMLU 100, no GSM8K."),
    judge: str = typer.Option("substring", help="First refusal judge."),
    second_judge: str = typer.Option("ngram-lr", help="Second judge on the same answers ('none' to skip)."),
    seed: int = typer.Option(0, help="Seed of the splits, attack draws, Optuna and bootstrap."),
    dtype: str = typer.Option(None, help="Model dtype."),
    as_json: bool = typer.Option(False, "--json", help="Print harden.json's summary."),
) -> None:
    """Fit a harm gate, search each hardening steer's strength on validation (Optuna), measure ASR and costs on test, recommend a gated steer."""
    from dataclasses import replace

    from ..models import load_model
    from ..runs.harden import HardenConfig, harden as run_harden

    config = HardenConfig.quick() if quick else HardenConfig()
    changes: dict = {"attacks": tuple(a.strip() for a in attacks.split(",") if a.strip()), "judge": judge, "seed": seed,
                     "second_judge": None if second_judge.lower() == "none" else second_judge, "ungated": not no_ungated,
                     "crescendo_transcripts": str(crescendo) if crescendo else None}
    if steers:
        changes["steers"] = tuple(s.strip() for s in steers.split(",") if s.strip())
    for name, value in (("limit", limit), ("trials", trials), ("mmlu", mmlu), ("arc", arc), ("gsm8k", gsm8k), ("shots", shots)):
        if value is not None:
            changes[name] = value
    config = replace(config, **changes)
    lm = load_model(model, dtype=dtype)
    summary = run_harden(lm, direction, out, config, features_dir=features, heads_dir=heads, model_spec=model)
    if as_json:
        print_json({k: summary[k] for k in ("gate", "strengths", "recommended", "targets", "summary")})
        return
    console.print((out / "harden.md").read_text())
    console.print(f"written: {out / 'harden.json'}, {out / 'pareto.png'}" + (f", {out / 'steer.yaml'}" if summary["recommended"] else ""))
