"""``refusal-steer run CONFIG.yaml``: declared stages (direction, SAEs, an evaluation matrix) as one resumable run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, err_console


@app.command("run")
def run(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/demo-quick.yaml; see docs/steers.md and runs/config.py."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default runs/CONFIG-NAME); a rerun resumes finished stages."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the config and list its stages; run nothing."),
) -> None:
    """Run the stages a YAML config declares; every result carries its steer fingerprint, model hash, data and judge."""
    from ..runs.config import load_run_config
    from ..runs.execute import execute_run, plan

    run_config = load_run_config(config)
    stages = plan(run_config)
    if dry_run:
        for i, name in enumerate(stages, 1):
            console.print(f"{i}. {name}", highlight=False)
        return
    folder = out or Path("runs") / config.stem
    result = execute_run(run_config, folder, announce=lambda text: err_console.print(text, highlight=False))
    console.print(f"[bold green]done.[/] {result}")
