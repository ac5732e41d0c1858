"""``refusal-steer direction`` and ``refusal-steer orthogonalize``: the top-down refusal direction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import app
from ._common import console, print_json


def _parse_ids(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    from ..errors import ConfigError

    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ConfigError(f"--refusal-tokens {text!r} is not a comma-separated list of token ids") from None


@app.command("direction")
def direction(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    harmful: str = typer.Option("advbench", help="Harmful instructions dataset (train split fits, val split selects); join several with '+', e.g. advbench+harmbench-val+harmbench-test."),
    harmless: str = typer.Option("harmless", help="Harmless instructions dataset."),
    n_train: int = typer.Option(128, help="Prompts per class for difference-in-means."),
    n_val: int = typer.Option(32, help="Prompts per class for selection."),
    n_kl: int = typer.Option(128, help="Harmless validation prompts the KL filter is measured on (a mean a few prompts dominate; 32 misjudge it)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (resumes if it holds finished stages)."),
    seed: int = typer.Option(0, help="Seed of the splits and samples."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    kl_threshold: float = typer.Option(0.1, help="Discard candidates whose ablation has harmless KL >= this."),
    induce_threshold: float = typer.Option(0.0, help="Discard candidates whose addition gives harmless log-odds <= this."),
    max_layer_fraction: float = typer.Option(0.8, help="Only consider layers below this fraction of the depth."),
    screen_top_k: int = typer.Option(16, help="Exactly score only the k best first-order estimates; 0 = all."),
    full_table: bool = typer.Option(False, help="Compute KL and induce for every exactly scored candidate."),
    relax_induce: bool = typer.Option(True, "--relax-induce/--strict-induce", help="If nothing passes the induce filter, pick the lowest bypass among KL-passing candidates (recorded as rule)."),
    actadd_candidates: int = typer.Option(4, help="If adding the selected direction cannot lift harmless refusal log-odds above 0, calibrate up to this many next-lowest-bypass candidates and add the first that can (written to OUT/actadd.safetensors). 0: always add the selected direction (Arditi et al.)."),
    actadd_positions: str = typer.Option("prompt", help="Where actadd:OUT adds the direction: 'prompt' (the prompt's tokens; the answer stays fluent) or 'all' (generated tokens too, as Arditi et al.; strong directions then loop)."),
    cap_candidates: int = typer.Option(8, "--cap-candidates", "--clamp-candidates", help="Score this many of the lowest-bypass candidates under capped ablation (the projection lowered to the harmless level, not to 0) with the same KL filter, and write the best to OUT/cap.safetensors (what cap:OUT applies). 0 = skip."),
    optimize_steps: int = typer.Option(10, help="Refine the selected direction by this many gradient steps (compliant answers to harmful train prompts + harmless KL under ablation; the checkpoint with the lowest validation bypass passing the KL filter is kept) and write OUT/optimized.safetensors, which ablate:OUT and orthogonalize --direction OUT then apply (OUT/direction.safetensors stays the selected one). 0 = skip."),
    optimize_kl_weight: float = typer.Option(0.5, help="Weight of the harmless KL term in the refinement."),
    optimize_lr: float = typer.Option(0.01, help="Adam learning rate of the refinement."),
    refusal_tokens: str = typer.Option(None, help="Comma-separated refusal token ids (default: discovered)."),
    judge: str = typer.Option("substring", help="Judge used to discover refusal tokens (and, in the refinement, to keep only compliant answers)."),
    dtype: str = typer.Option(None, help="Model dtype (float32, bfloat16, ...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the selection summary as JSON."),
) -> None:
    """Find and select the refusal direction (difference-in-means + Arditi et al. selection); write OUT/direction.safetensors (and OUT/actadd.safetensors, the direction actadd:OUT adds, and OUT/optimized.safetensors, the refined direction)."""
    from ..directions.cap import cap_summary
    from ..directions.optimize import OptimizeConfig
    from ..runs.direction import DirectionConfig, find_direction
    from ..directions.selection import SelectionConfig
    from ..models import load_model

    config = DirectionConfig(
        harmful=harmful, harmless=harmless, n_train=n_train, n_val=n_val, n_kl=n_kl, seed=seed, batch_size=batch_size, judge=judge,
        refusal_token_ids=_parse_ids(refusal_tokens),
        selection=SelectionConfig(kl_threshold=kl_threshold, induce_threshold=induce_threshold, max_layer_fraction=max_layer_fraction,
                                  screen_top_k=screen_top_k, full_table=full_table, relax_induce=relax_induce,
                                  actadd_candidates=actadd_candidates, actadd_positions=actadd_positions, cap_candidates=cap_candidates,
                                  batch_size=batch_size),
        optimize=OptimizeConfig(steps=optimize_steps, kl_weight=optimize_kl_weight, lr=optimize_lr, kl_threshold=kl_threshold),
    )
    lm = load_model(model, dtype=dtype)
    result = find_direction(lm, config, out)
    chosen = result.selection["chosen"]
    summary = {
        "direction": str(result.direction_path),
        "point": result.selection["point"],
        "position": result.selection["position"],
        "bypass_score": chosen["bypass"],
        "induce_score": chosen["induce"],
        "kl": chosen["kl"],
        "rule": result.selection.get("rule"),
        "actadd_coef": result.selection.get("actadd_coef"),
        "actadd": result.selection.get("actadd"),
        "cap": cap_summary(result.selection.get("cap")) or None,
        "optimized": _optimized_summary(out, result.selection.get("optimization")),
        "baseline_refusal_score_harmful": result.selection["baseline_refusal_score_harmful"],
        "refusal_tokens": result.refusal_tokens["tokens"],
        "selection": str(out / "selection.json"),
        "heatmap": str(out / "selection_heatmap.png"),
    }
    if as_json:
        print_json(summary)
        return
    console.print(f"[bold]refusal direction[/] at {summary['point']} (position {summary['position']})")
    console.print(f"  bypass score {chosen['bypass']:.2f} (baseline {summary['baseline_refusal_score_harmful']:.2f}), "
                  f"induce {chosen['induce']:.2f}, KL {chosen['kl']:.3f}")
    console.print(f"  refusal tokens {summary['refusal_tokens']}")
    actadd = summary["actadd"] or {}
    if actadd and not actadd.get("same_as_ablation"):
        console.print(f"  activation addition uses {actadd['point']} position {actadd['position']} x {actadd['coef']:g} "
                      f"at {actadd.get('positions', 'all')} tokens (the selected direction could not induce refusal on validation)")
    else:
        console.print(f"  activation addition: the same direction x {summary['actadd_coef']:g} at {actadd.get('positions', 'all')} tokens")
    cap = result.selection.get("cap")
    if cap and cap.get("point"):
        row = next(r for r in cap["table"] if r["status"] == "selected")
        console.print(f"  capped ablation (cap:{out}): {cap['point']} position {cap['position']}, "
                      f"bypass score {row['bypass']:.2f}, KL {row['kl']:.3f}")
    elif cap:
        console.print(f"  capped ablation: no candidate passed KL < {cap['kl_threshold']:g}; no cap.safetensors written")
    optimized = summary["optimized"]
    if optimized and optimized["file"] is None:
        console.print("  refinement kept step 0 (no later checkpoint passed the KL filter with a lower validation bypass): "
                      f"no refined file; ablate:{out} applies the selected direction")
    elif optimized:
        console.print(f"  refined direction ({optimized['file']}, what ablate:{out} applies; ablate:{out}/direction.safetensors "
                      f"applies the selected one): step {optimized['step']}, bypass score {optimized['bypass']:.2f}, "
                      f"KL {optimized['kl']:.3f} on validation (step 0 is the selected direction)")
    console.print(f"  wrote {summary['direction']}, {summary['selection']}, {summary['heatmap']}")


def _optimized_summary(out: Path, optimization: dict | None) -> dict | None:
    """The kept checkpoint of the refinement (None when it was skipped); ``file`` is None when step 0 was kept (no refined file)."""
    from ..directions.io import OPTIMIZED_FILENAME
    from ..runs.execute import optimization_summary

    summary = optimization_summary(optimization)
    if summary is None:
        return None
    kept = summary["kept"]
    return {"file": str(out / OPTIMIZED_FILENAME) if kept["step"] != 0 else None, "step": kept["step"], "bypass": kept["bypass"], "kl": kept["kl"]}


@app.command("orthogonalize")
def orthogonalize(
    model: str = typer.Option("default", "--model", "-m", help="Model to edit."),
    direction_dir: Path = typer.Option(..., "--direction", "-d", help="Folder from 'direction' (its refined direction, optimized.safetensors, when present, else direction.safetensors, as ablate:DIR), or a direction file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output Hugging Face model folder."),
    gguf: Optional[bool] = typer.Option(None, "--gguf/--no-gguf", help="Also write OUT/model-orthogonalized.gguf (for llama.cpp, Ollama): the source GGUF with the edited tensors replaced. Default: when the model came as a GGUF (the default model does)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="Type of the edited tensors in the GGUF: f16 (matches hook ablation closely), q8_0, source (each tensor's source type when writable, else q8_0: smallest, least faithful) or f32. Untouched tensors are copied as they are."),
) -> None:
    """Bake directional ablation into the weights: a standard Hugging Face model folder and, for a GGUF source, a GGUF."""
    from ..directions.io import load_ablation_direction
    from ..directions.orthogonalize import ORTHOGONALIZED_GGUF, ORTHOGONALIZED_RECORD, export_orthogonalized
    from ..models import load_model
    from ..models.gguf_export import check_tensor_type

    check_tensor_type(gguf_type)  # before the model loads
    saved = load_ablation_direction(direction_dir)
    lm = load_model(model)
    path = export_orthogonalized(lm, saved.direction, out, metadata={"direction": str(direction_dir), **saved.metadata},
                                 gguf=gguf, gguf_type=gguf_type, progress=True)  # type: ignore[arg-type]
    console.print(f"wrote orthogonalised model to {path} (load it with transformers' from_pretrained)")
    record = json.loads((path / ORTHOGONALIZED_RECORD).read_text())
    if "gguf" in record:
        size = record["gguf"]["bytes"] / 1e6
        console.print(f"wrote {path / ORTHOGONALIZED_GGUF} ({size:.0f} MB, edited tensors as {gguf_type}) for llama.cpp "
                      f"(llama-cli -m {path / ORTHOGONALIZED_GGUF}) or Ollama (a Modelfile with FROM {path / ORTHOGONALIZED_GGUF})")
