"""``refusal-steer heads``: rank the attention heads that write the refusal direction, for the ``heads:`` steer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import app
from ._common import console, print_json


@app.command("heads")
def heads(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    direction: Path = typer.Option(..., "--direction", "-d", help="Direction folder from 'refusal-steer direction' (its refined direction when present, as ablate:DIR), or a direction file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder HEADSDIR (heads.json + heads.safetensors), what --steer heads:HEADSDIR reads."),
    harmful: str = typer.Option("advbench", help="Harmful instructions dataset (its train split)."),
    harmless: str = typer.Option("harmless", help="Harmless instructions dataset (its train split)."),
    n_train: int = typer.Option(128, help="Train prompts per class."),
    seed: int = typer.Option(0, help="Seed of the splits and samples."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    top: int = typer.Option(20, help="Heads to print."),
    dtype: str = typer.Option(None, help="Model dtype (float32, bfloat16, ...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary and the top heads as JSON."),
) -> None:
    """Rank every attention head by its write along the refusal direction (harmful minus harmless train prompts, last token) and record ITI's per-head steering vectors; steer with --steer heads:OUT:n=16:coef=4."""
    from ..data import load_prompts
    from ..directions.heads import rank_heads
    from ..directions.io import load_ablation_direction
    from ..models import load_model

    saved = load_ablation_direction(direction)  # before the model loads: a wrong folder fails fast
    harmful_prompts = load_prompts(harmful, split="train", limit=n_train, seed=seed)
    harmless_prompts = load_prompts(harmless, split="train", limit=n_train, seed=seed)
    lm = load_model(model, dtype=dtype)
    ranking = rank_heads(lm, saved.direction, harmful_prompts, harmless_prompts, batch_size=batch_size, progress=True,
                         metadata={"direction": str(direction), "direction_point": str(saved.point), "harmful": harmful,
                                   "harmless": harmless, "split": "train", "seed": seed})
    ranking.save(out)
    rows = ranking.heads[:top]
    if as_json:
        print_json({"heads": str(out / "heads.json"), "n_layers": ranking.n_layers, "n_heads": ranking.n_heads,
                    "n_harmful": ranking.n_harmful, "n_harmless": ranking.n_harmless,
                    "top": [{"point": str(r.point), "score": r.score, "sigma": r.sigma} for r in rows]})
        return
    table = Table(title=f"heads writing the refusal direction ({ranking.n_harmful} harmful, {ranking.n_harmless} harmless train prompts)")
    for column in ("rank", "point", "score", "harmful", "harmless", "sigma", "|theta|"):
        table.add_column(column, justify="right" if column != "point" else "left")
    for rank, row in enumerate(rows, 1):
        table.add_row(str(rank), str(row.point), f"{row.score:.4g}", f"{row.harmful:.4g}", f"{row.harmless:.4g}", f"{row.sigma:.4g}",
                      f"{row.theta_norm:.4g}")
    console.print(table)
    console.print(f"wrote {out / 'heads.json'} and {out / 'heads.safetensors'} ({ranking.n_layers} layers x {ranking.n_heads} heads); "
                  f"steer with --steer heads:{out}:n=16:coef=4")
