"""``refusal-steer probe``: dense vs SAE-latent refusal probes in and out of distribution, and the jailbreak mechanism."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import ConfigError
from . import app
from ._common import console, print_json


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"0,4,8-12"`` -> ``(0, 4, 8, 9, 10, 11, 12)``; ``None`` or ``"all"`` -> ``None`` (every layer)."""
    if text is None or text.strip() in ("", "all"):
        return None
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(part))
        except ValueError as exc:
            raise ConfigError(f"--layers {text!r} is not a list of layers", fix="write e.g. --layers 0,4,8-12 or --layers all") from exc
    return tuple(dict.fromkeys(layers))


def _fmt(rate: dict | None) -> str:
    if rate is None:
        return "undefined"
    return f"{rate['value']:.3f} [{rate['lo']:.3f}, {rate['hi']:.3f}]"


@app.command("probe")
def probe_command(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id (the attacked model)."),
    features: Path = typer.Option(..., "--features", help="Features folder FDIR (features.json, written by 'refusal-steer features find')."),
    transcripts: Path = typer.Option(..., "--transcripts", help="A .transcripts.jsonl written by 'refusal-steer attack' on this model, unsteered."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder PDIR (probes.json, mechanism.json, the plot)."),
    layers: str = typer.Option(None, "--layers", help="Dense-probe layers: 0,4,8-12 or all (default: all)."),
    n_train: int = typer.Option(128, "--n-train", help="Train prompts per class (plain harmful vs harmless, train split)."),
    n_test: int = typer.Option(64, "--n-test", help="In-distribution test prompts per class (test split)."),
    k: int = typer.Option(None, "--k", help="Refusal latents: the top k of the features' set (default: the whole set)."),
    latent_set: str = typer.Option("selected", "--set", help="Which latent set of features.json (selected, cossim, actdiff, attribution)."),
    reduce: str = typer.Option("max", help="Latent value per prompt: max (over the tokens after the template prefix) or last (last prompt token)."),
    harmful: str = typer.Option("advbench", help="Harmful prompts (train split trains, test split checks)."),
    harmless: str = typer.Option("harmless", help="Harmless prompts."),
    judge: str = typer.Option(None, help="Re-judge the recorded answers with this judge (default: the verdicts in the transcripts)."),
    l2: float = typer.Option(1e-2, help="L2 strength of the logistic regressions (on the mean log-loss)."),
    allow_one_class: bool = typer.Option(False, "--allow-one-class", help="Report accuracy only when every jailbreak got the same verdict."),
    seed: int = typer.Option(0, help="Seed of the splits, the random-latent control and the bootstrap."),
    batch_size: int = typer.Option(8, min=1, help="Prompts per forward batch."),
    dtype: str = typer.Option(None, help="float32, bfloat16, float16 or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Train logistic probes on plain harmful vs harmless prompts (dense residual per layer, the refusal latents, random latents) and test them on jailbreaks labelled by the model's own refusals; measure the refusal latents' relative drop on successful vs failed jailbreaks (Yeo et al. 2025, section 5)."""
    from ..models import load_model
    from ..runs.probes import ProbesConfig, run_probes

    for what, path in (("--features", features), ("--transcripts", transcripts)):
        if not path.exists():
            raise ConfigError(f"{what} {path} does not exist",
                              fix="run 'refusal-steer features find --out FDIR' and 'refusal-steer attack --out FILE.json' (it writes FILE.transcripts.jsonl) first")
    config = ProbesConfig(harmful=harmful, harmless=harmless, n_train=n_train, n_test=n_test, layers=parse_layers(layers), k=k,
                          latent_set=latent_set, reduce=reduce, l2=l2, judge=judge, allow_one_class=allow_one_class, seed=seed,
                          batch_size=batch_size)
    lm = load_model(model, dtype=dtype)
    summary = run_probes(lm, features, transcripts, out, config)
    if as_json:
        print_json(summary)
        return
    n = summary["n"]
    table = Table(title=f"refusal probes: train {n['train_harmful']}+{n['train_harmless']}, test {n['test_harmful']}+{n['test_harmless']}, "
                        f"OOD {n['ood']} jailbreaks ({n['ood_refused']} refused, {summary['judge']})")
    for col in ("probe", "layer", "features", "ID accuracy", "ID AUROC", "OOD accuracy", "OOD AUROC"):
        table.add_column(col, no_wrap=col in ("probe", "layer", "features"))
    for p in summary["probes"]:
        table.add_row(p["kind"], "" if p["layer"] is None else str(p["layer"]), str(p["n_features"]),
                      _fmt(p["in_distribution"]["accuracy"]), _fmt(p["in_distribution"]["auroc"]), _fmt(p["ood"]["accuracy"]), _fmt(p["ood"]["auroc"]))
    console.print(table)
    mech = summary["mechanism"]
    console.print(f"refusal-latent relative drop (1 - wrapped/plain, {mech['reduce']}): successful jailbreaks {_fmt(mech['successful_jailbreaks'])} "
                  f"(n={mech['n_successful']}), failed {_fmt(mech['failed_jailbreaks'])} (n={mech['n_failed']}), difference "
                  f"{_fmt(mech['difference_successful_minus_failed'])}; {mech['n_undefined']} undefined. Yeo et al. report 0.73 vs 0.18.",
                  highlight=False)
    console.print(f"wrote {out / 'probes.json'}, {out / 'mechanism.json'} and {out / 'probes_ood_accuracy.png'}", highlight=False)
