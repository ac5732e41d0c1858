"""``refusal-steer sae``: train, evaluate and inspect sparse autoencoders."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import app
from ._common import console, print_json

sae_app = typer.Typer(help="Sparse autoencoders: train, evaluate, inspect (ours, SAELens, Gemma Scope).", no_args_is_help=True)
app.add_typer(sae_app, name="sae")


@sae_app.command("info")
def info(
    path: Path = typer.Argument(..., help="SAE directory (ours or SAELens) or a Gemma Scope params.npz."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show an SAE's format, architecture, widths, hook point, model and training record."""
    from ..sae import sae_info

    summary = sae_info(path)
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"SAE {path}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


@sae_app.command("train")
def train(
    activations: Path = typer.Option(..., "--activations", help="Directory of *.safetensors activation shards ((n, d_in) each)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints, cfg.json, sae_weights.safetensors, training.json)."),
    arch: str = typer.Option("topk", help="Architecture: relu_l1, topk, batchtopk, jumprelu."),
    width: int = typer.Option(8192, help="Number of latents (d_sae)."),
    k: int = typer.Option(32, help="Active latents per token (topk, batchtopk)."),
    tokens: int = typer.Option(..., help="Token budget."),
    point: str = typer.Option(None, help="Hook point the activations come from, e.g. resid_pre.12 (also picks the tensor in multi-tensor shards)."),
    model: str = typer.Option(None, help="Model the activations come from (recorded in cfg.json)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 2e-4 / sqrt(width / 16384))."),
    batch_size: int = typer.Option(4096, help="Activations per optimizer step."),
    l1_coefficient: float = typer.Option(5.0, help="relu_l1: L1 coefficient."),
    l0_coefficient: float = typer.Option(1.0, help="jumprelu: L0 coefficient."),
    dead_tokens: int = typer.Option(1_000_000, help="Tokens without firing after which a latent counts as dead."),
    checkpoint_every: int = typer.Option(500, help="Checkpoint every N steps (0: never); a rerun resumes from the last one."),
    seed: int = typer.Option(0, help="Seed for initialisation and shuffling."),
    device: str = typer.Option("cpu", help="torch device."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
) -> None:
    """Train an SAE on cached activations (streaming from --model comes with the caching engine)."""
    from ..sae import TrainConfig, build_sae, registry, train_sae
    from ..sae.shards import ActivationShards

    shards = ActivationShards(activations, point=point)
    cfg_cls = registry.get(arch)[1]
    fields: dict = {"d_in": shards.d_in, "d_sae": width, "point": point, "model": model}
    if arch in ("topk", "batchtopk"):
        fields["k"] = k
    elif arch == "relu_l1":
        fields["l1_coefficient"] = l1_coefficient
    elif arch == "jumprelu":
        fields["l0_coefficient"] = l0_coefficient
    sae = build_sae(cfg_cls(**fields)).to(device)
    tcfg = TrainConfig(
        tokens=tokens, batch_size=batch_size, lr=lr, dead_tokens=dead_tokens, checkpoint_every=checkpoint_every, seed=seed, progress=not no_progress
    )
    res = train_sae(sae, shards, tcfg, out)
    summary = {"out": str(out), "arch": arch, "steps": res.steps, "tokens": res.tokens, "seconds": res.seconds, "resumed_from": res.resumed_from,
               "final": res.history[-1] if res.history else None}
    if as_json:
        print_json(summary)
    else:
        console.print(f"trained {arch} SAE ({width} latents) for {res.steps} steps / {res.tokens} tokens -> {out}")


@sae_app.command("eval")
def evaluate(
    sae_path: Path = typer.Option(..., "--sae", help="SAE directory or params.npz."),
    activations: Path = typer.Option(..., "--activations", help="Directory of held-out *.safetensors activation shards."),
    point: str = typer.Option(None, help="Tensor/hook point to read in multi-tensor shards."),
    max_tokens: int = typer.Option(None, help="Evaluate on at most this many tokens."),
    dense_threshold: float = typer.Option(0.1, help="Firing frequency above which a latent counts as dense."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """MSE, FVU, L0, dead and dense latent fractions on held-out activations (spliced CE/KL needs --model, coming)."""
    from ..sae import evaluate_sae, load_sae
    from ..sae.shards import ActivationShards

    shards = ActivationShards(activations, point=point)
    sae = load_sae(sae_path, d_model=shards.d_in)
    metrics = evaluate_sae(sae, shards, dense_threshold=dense_threshold, max_tokens=max_tokens).to_dict()
    if as_json:
        print_json(metrics)
        return
    table = Table(title=f"SAE {sae_path}", show_header=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
