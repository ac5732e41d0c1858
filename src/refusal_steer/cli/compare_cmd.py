"""``refusal-steer compare``: top-down vs bottom-up steerers on the same held-out prompts and judge."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, print_json


@app.command("compare")
def compare(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    direction: Path = typer.Option(..., "--direction", help="Direction folder (OUT/direction of the demo or 'refusal-steer direction')."),
    features: Path = typer.Option(..., "--features", help="Features folder written by 'refusal-steer features find'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder CDIR (compare.json, compare.png, compare.md; resumes)."),
    harmful: str = typer.Option("advbench", help="Harmful test prompts (test split)."),
    harmless: str = typer.Option("harmless", help="Harmless test prompts (test split)."),
    limit: int = typer.Option(100, help="Test prompts per class."),
    steerers: str = typer.Option(None, help="Comma-separated subset of: baseline, topdown, saem3, sae, hybrid, hybrid2, latents, latents-cossim, "
                                           "latents-unfiltered, latents-actdiff, latents-attribution, latents-per-prompt, latents-induce, actadd (default: all); run in "
                                           "this order, the baseline always included."),
    judge: str = typer.Option("substring", help="Refusal judge."),
    second_judge: str = typer.Option("ngram-lr", "--second-judge", help="A second judge re-reading the same answers (no generation); 'none' skips it."),
    max_new_tokens: int = typer.Option(32, help="Answer length."),
    seed: int = typer.Option(0, help="Seed of the splits and bootstrap."),
    dtype: str = typer.Option(None, help="Model dtype."),
    as_json: bool = typer.Option(False, "--json", help="Print compare.json."),
) -> None:
    """Run topdown, saem3, sae, hybrid, hybrid2 and the latent clamps (with Yeo et al.'s baselines) on the same test prompts; write CDIR/compare.json, a bar chart and a report section."""
    from ..models import load_model
    from ..runs.compare import BYPASS, INDUCE, CompareConfig, compare_steerers

    chosen = tuple(s.strip() for s in steerers.split(",")) if steerers else BYPASS + INDUCE
    config = CompareConfig(harmful=harmful, harmless=harmless, limit=limit, judge=judge, second_judge=None if second_judge == 'none' else second_judge, max_new_tokens=max_new_tokens, seed=seed, steerers=chosen)
    lm = load_model(model, dtype=dtype)
    result = compare_steerers(lm, direction, features, out, config)
    if as_json:
        print_json(result)
        return
    console.print((out / "compare.md").read_text())
    console.print(f"written: {out / 'compare.json'}, {out / 'compare.png'}")
