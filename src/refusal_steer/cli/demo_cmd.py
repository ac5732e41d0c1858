"""``refusal-steer demo``: the top-down refusal pipeline end to end on the default model."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, err_console


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder (a rerun resumes finished stages)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller run: 64/16 fitting prompts, 32 test prompts per class."),
    model: str = typer.Option("default", "--model", "-m", help="Model to run on."),
    n_eval: int = typer.Option(None, help="Held-out test prompts per class (default 100, quick 32)."),
    actadd_candidates: int = typer.Option(4, help="Let activation addition use another candidate when the selected direction cannot induce refusal (see 'direction --help'); 0 = the selected one."),
    actadd_positions: str = typer.Option("prompt", help="Where activation addition adds the direction: 'prompt' tokens or 'all' (Arditi et al.)."),
    optimize_steps: int = typer.Option(None, help="Gradient steps refining the direction (default 10, quick 5); 0 = no refined-ablation condition."),
    cap_candidates: int = typer.Option(0, "--cap-candidates", "--clamp-candidates", help="Also evaluate capped ablation, choosing among this many lowest-bypass candidates (about 2 more minutes); 0 = skip."),
) -> None:
    """Find the refusal direction of the default model, then compare baseline, ablation (difference-in-means and refined) and activation addition on held-out prompts.

    The same run as `refusal-steer run configs/demo.yaml` (configs/demo-quick.yaml with --quick).
    """
    from ..demo import DemoConfig, run_demo

    overrides = {"model": model, "actadd_candidates": actadd_candidates, "actadd_positions": actadd_positions,
                 "cap_candidates": cap_candidates, **({"n_eval": n_eval} if n_eval else {}),
                 **({"optimize_steps": optimize_steps} if optimize_steps is not None else {})}
    config = DemoConfig.quick(**overrides) if quick else DemoConfig(**overrides)
    if quick and out == Path("runs/demo"):
        out = Path("runs/demo-quick")
    report = run_demo(out, config, announce=lambda text: err_console.print(text, highlight=False))
    console.print(f"[bold green]done.[/] report: {report} (also {report.with_suffix('.html')}); numbers: {report.parent / 'metrics.json'}")
