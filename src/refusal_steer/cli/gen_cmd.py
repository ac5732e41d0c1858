"""``refusal-steer generate`` and ``refusal-steer cache``: thin layers over generation.py and activations.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from . import app
from ._common import console, err_console, print_json, steer_help


def _prompts(prompt: list[str] | None, dataset: str | None, limit: int | None, split: str | None, seed: int) -> tuple[list[Any], str]:
    if bool(prompt) == bool(dataset):
        raise ConfigError("give either --prompt (one or more) or --dataset", fix="e.g. --prompt 'How do I bake bread?' or --dataset advbench --limit 16")
    if prompt:
        return list(prompt), "prompt"
    from ..data import load_dataset  # imported lazily: loading data is only needed here

    return list(load_dataset(dataset, split=split, limit=limit, seed=seed)), str(dataset)


def _steers(lm: Any, steer: list[str] | None) -> list[Any]:
    from ..interventions import parse_steer

    out: list[Any] = []
    for spec in steer or []:
        out.extend(parse_steer(spec, lm))
    return out


@app.command("generate")
def generate_cmd(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    steer: list[str] = typer.Option(None, "--steer", "-s", help=steer_help()),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A user prompt; repeatable."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="A dataset name (refusal-steer data list) or jsonl:PATH / csv:PATH."),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="At most this many dataset prompts (seeded subsample)."),
    split: str = typer.Option(None, "--split", help="Only this split of the dataset: train, val or test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the dataset split/subsample and of sampling."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Generation budget per prompt."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Prompts per batch (halved on out-of-memory)."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --sample)."),
    system: str = typer.Option(None, "--system", help="A system prompt for every prompt."),
    dtype: str = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps..."),
    out: Path = typer.Option(None, "--out", "-o", help="Write completions to this JSONL file."),
    json_out: bool = typer.Option(False, "--json", help="Print the completions as JSON."),
) -> None:
    """Generate answers to prompts, optionally steered; greedy by default."""
    from ..generation import generate
    from ..models import load_model

    prompts, source = _prompts(prompt, dataset, limit, split, seed)
    lm = load_model(model, dtype=dtype, device=device)
    interventions = _steers(lm, steer)
    completions = generate(
        lm, prompts, interventions, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_p=top_p,
        seed=seed, batch_size=batch_size, system=system, progress=True,
    )
    rows = [{"source": source, "steer": list(steer or []), **c.to_dict()} for c in completions]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        err_console.print(f"wrote {len(rows)} completions to {out}")
    if json_out:
        print_json(rows)
    elif out is None:
        for completion in completions:
            shown = completion.prompt if isinstance(completion.prompt, str) else completion.prompt[-1]["content"]
            console.print(f"[bold]> {shown}[/]", highlight=False)
            console.print(completion.text, highlight=False, markup=False)
            console.print(f"[dim]({completion.n_new_tokens} tokens, {completion.finish_reason})[/]\n")


@app.command("cache")
def cache_cmd(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="A dataset name or jsonl:PATH / csv:PATH."),
    points: str = typer.Option(..., "--points", help="Comma-separated hook points, e.g. resid_pre.12,mlp_out.3."),
    positions: str = typer.Option("last", "--positions", help="last, post_instruction, all or mean."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (rerun the same command to resume)."),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="At most this many prompts (seeded subsample)."),
    split: str = typer.Option(None, "--split", help="Only this split: train, val or test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and subsample."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage dtype: float32, bfloat16 or float16."),
    model_dtype: str = typer.Option(None, "--model-dtype", help="dtype the model runs in."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ..."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Prompts per forward pass."),
    shard_size: int = typer.Option(1024, "--shard-size", min=1, help="Prompts per shard."),
    steer: list[str] = typer.Option(None, "--steer", "-s", help=steer_help("Cache under")),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Cache activations at hook points for a dataset, in resumable safetensors shards."""
    from ..activations import POSITION_MODES, cache_activations
    from ..hooks import parse_points
    from ..models import load_model

    if positions not in POSITION_MODES:
        raise ConfigError(f"unknown --positions {positions!r}", fix=f"use one of {', '.join(POSITION_MODES)}")
    point_list = parse_points(points)
    prompts, source = _prompts(None, dataset, limit, split, seed)
    lm = load_model(model, dtype=model_dtype, device=device)
    manifest = cache_activations(
        lm, prompts, point_list, out, positions=positions, dtype=dtype, batch_size=batch_size, shard_size=shard_size,
        interventions=_steers(lm, steer), source=source if split is None else f"{source}:{split}", progress=True,
    )
    if json_out:
        print_json(manifest)
    else:
        console.print(f"cached {manifest['rows']} rows x {len(point_list)} points for {manifest['config']['n']} prompts in {out} ({len(manifest['shards'])} shards)")
