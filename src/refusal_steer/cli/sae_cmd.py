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
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints, cfg.json, sae_weights.safetensors, training.json)."),
    tokens: int = typer.Option(..., help="Token budget (activations seen in training; cached tokens are reused in epochs when fewer)."),
    activations: Path = typer.Option(None, "--activations", help="Directory of *.safetensors activation shards ((n, d_in) each)."),
    model: str = typer.Option(None, help="Model to cache activations from (without --activations), and recorded in cfg.json."),
    point: str = typer.Option(None, help="Hook point, e.g. resid_pre.12 (required with --model; picks the tensor in multi-tensor shards)."),
    cache_tokens: int = typer.Option(None, "--cache-tokens", help="With --model: tokens of the chat/harmful/harmless mix to cache (default: --tokens)."),
    cache_points: str = typer.Option(None, "--cache-points", help="With --model: more points to cache in the same pass (e.g. resid_pre.13,resid_pre.15), for SAEs at other layers via --activations."),
    arch: str = typer.Option("topk", help="Architecture: relu_l1, topk, batchtopk, jumprelu."),
    width: int = typer.Option(8192, help="Number of latents (d_sae)."),
    k: int = typer.Option(32, help="Active latents per token (topk, batchtopk)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 2e-4 / sqrt(width / 16384))."),
    batch_size: int = typer.Option(4096, help="Activations per optimizer step."),
    l1_coefficient: float = typer.Option(5.0, help="relu_l1: L1 coefficient."),
    l0_coefficient: float = typer.Option(1.0, help="jumprelu: L0 coefficient."),
    init_l0: float = typer.Option(None, help="jumprelu: start thresholds where about this many latents fire per token on the first batch (for short token budgets)."),
    dead_tokens: int = typer.Option(1_000_000, help="Tokens without firing after which a latent counts as dead."),
    checkpoint_every: int = typer.Option(500, help="Checkpoint every N steps (0: never); a rerun resumes from the last one."),
    seed: int = typer.Option(0, help="Seed for initialisation, the token mix and shuffling."),
    device: str = typer.Option("cpu", help="torch device (under torchrun, cuda becomes cuda:LOCAL_RANK)."),
    cache_only: bool = typer.Option(False, "--cache-only", help="With --model: cache the activations to OUT/activations and stop (then train with torchrun on --activations)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
) -> None:
    """Train an SAE on cached activations, or on a chat + harmful + harmless token mix cached from --model.

    With --model, the mix's train split is cached once to OUT/activations (resumable, the forward pass
    stops after the hooked layer), then training runs over it; a rerun resumes either stage.
    Under torchrun (--nproc-per-node N) training is data-parallel over N processes (gloo on CPU, NCCL
    on CUDA) and trains the SAE one process would; it needs --activations (cache first with one process).
    """
    from ..errors import ConfigError
    from ..runs.sae_stage import build_for, cache_mix, epochs
    from ..sae import TrainConfig, train_sae
    from ..sae.distributed import data_parallel_from_env, launched_world_size
    from ..sae.shards import ActivationShards

    if activations is None:
        if model is None or point is None:
            raise ConfigError("sae train needs --activations DIR, or --model MODEL with --point", fix="e.g. --model default --point resid_pre.14")
        if launched_world_size() > 1:
            raise ConfigError(
                "sae train under torchrun trains on cached activations only (caching from --model runs in one process)",
                fix=f"cache first with one process: refusal-steer sae train --model {model} --point {point} --tokens {tokens} "
                f"{f'--cache-tokens {cache_tokens} ' if cache_tokens else ''}--out {out} --cache-only; "
                f"then train with torchrun ... sae train --activations {out / 'activations'}",
            )
        from ..models import load_model

        points = [point] + [p for p in (cache_points or "").split(",") if p.strip() and p.strip() != point]
        activations = cache_mix(load_model(model, device=device), points, out / "activations", cache_tokens or tokens, seed,
                                progress=not no_progress)
        if cache_only:
            console.print(f"cached activations -> {activations}")
            return
    elif cache_only:
        raise ConfigError("--cache-only caches from --model, but --activations was given", fix="drop --cache-only, or --activations")
    with data_parallel_from_env(device) as (parallel, device):
        shards = ActivationShards(activations, point=point)
        sae = build_for(arch, shards.d_in, width, point, model, k=k, l1_coefficient=l1_coefficient, l0_coefficient=l0_coefficient,
                        init_l0=init_l0).to(device)
        tcfg = TrainConfig(
            tokens=tokens, batch_size=batch_size, lr=lr, dead_tokens=dead_tokens, checkpoint_every=checkpoint_every, seed=seed,
            progress=not no_progress,
        )
        res = train_sae(sae, epochs(shards, tokens), tcfg, out, parallel=parallel)
    if parallel is not None and not parallel.is_main:
        return
    summary = {"out": str(out), "arch": arch, "steps": res.steps, "tokens": res.tokens, "seconds": res.seconds, "resumed_from": res.resumed_from,
               "final": res.history[-1] if res.history else None}
    if as_json:
        print_json(summary)
    else:
        console.print(f"trained {arch} SAE ({width} latents) for {res.steps} steps / {res.tokens} tokens -> {out}")


@sae_app.command("eval")
def evaluate(
    sae_path: Path = typer.Option(..., "--sae", help="SAE directory or params.npz."),
    activations: Path = typer.Option(None, "--activations", help="Directory of held-out *.safetensors activation shards."),
    model: str = typer.Option(None, help="Evaluate against this model on a held-out (test-split) token mix, including spliced CE/KL."),
    point: str = typer.Option(None, help="Hook point (default: the SAE's own); picks the tensor in multi-tensor shards."),
    max_tokens: int = typer.Option(None, help="Evaluate on at most this many tokens (with --model: default 20000)."),
    dense_threshold: float = typer.Option(0.1, help="Firing frequency above which a latent counts as dense."),
    device: str = typer.Option("cpu", help="torch device (with --model)."),
    spliced: bool = typer.Option(True, "--spliced/--no-spliced", help="With --model: also splice the SAE in (CE recovered, KL) on the first --spliced-tokens tokens."),
    spliced_tokens: int = typer.Option(2500, help="With --model: tokens the spliced CE/KL pass scores (3 full forwards per batch of 2, full-vocabulary logits)."),
    with_error: bool = typer.Option(False, "--with-error/--no-with-error", help="With --model: also splice with the error term added back (a check: its KL is ~0; one more forward)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """MSE, FVU, L0, dead and dense latent fractions; with --model also CE loss recovered and KL spliced in."""
    from ..errors import ConfigError
    from ..sae import evaluate_sae, load_sae

    if model is not None:
        from ..models import load_model
        from ..sae.model_eval import evaluate_on_model

        lm = load_model(model, device=device)
        sae = load_sae(sae_path, d_model=lm.d_model).to(lm.device)
        metrics = evaluate_on_model(lm, sae, point=point, n_tokens=max_tokens or 20_000, dense_threshold=dense_threshold,
                                    spliced=spliced, spliced_tokens=spliced_tokens, with_error=with_error, progress=not no_progress)
    elif activations is not None:
        from ..sae.shards import ActivationShards

        shards = ActivationShards(activations, point=point)
        sae = load_sae(sae_path, d_model=shards.d_in)
        metrics = evaluate_sae(sae, shards, dense_threshold=dense_threshold, max_tokens=max_tokens).to_dict()
    else:
        raise ConfigError("sae eval needs --model MODEL or --activations DIR", fix="e.g. --model default (held-out mix, spliced metrics too)")
    if as_json:
        print_json(metrics)
        return
    table = Table(title=f"SAE {sae_path}", show_header=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
