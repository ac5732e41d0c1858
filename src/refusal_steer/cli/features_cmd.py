"""``refusal-steer features``: find the SAE latents that carry refusal, and show them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import app
from ._common import console, print_json

features_app = typer.Typer(help="SAE latents that carry refusal: find (cosine, attribution patching, ActDiff) and show them.",
                           no_args_is_help=True)
app.add_typer(features_app, name="features")


def _sae_refs(saes: str | None, model: str) -> list[str]:
    from ..errors import ConfigError
    from ..sae.pretrained import default_band

    if saes:
        return [s.strip() for s in saes.split(",") if s.strip()]
    if model == "default":
        return default_band()
    raise ConfigError("--saes is required for a model other than the default one", fix="pass --saes DIR,DIR,... (SAE folders, one per layer)")


@features_app.command("find")
def find(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    direction: Path = typer.Option(..., "--direction", help="Direction folder (written by 'refusal-steer direction' or the demo: OUT/direction)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder FDIR (features.json; resumes finished stages)."),
    saes: str = typer.Option(None, "--saes", help="Comma-separated SAE folders or shipped names (default model: every shipped SAE)."),
    method: str = typer.Option("cossim+attribution", help="cossim+attribution (Yeo et al.), attribution, cossim or actdiff."),
    k: int = typer.Option(20, "--k", help="Latents per set (K*, the bypass may calibrate fewer)."),
    max_harmless_firing: float = typer.Option(0.5, help="Leave out of the selected set latents firing on more than this share of the harmless "
                                                        "train prompts (1 = Yeo et al.'s recipe unfiltered)."),
    harmful: str = typer.Option("advbench", help="Harmful prompts (train split scores, val split calibrates)."),
    harmless: str = typer.Option("harmless", help="Harmless prompts (train: ActDiff; val: KL and induction)."),
    n_train: int = typer.Option(128, help="Train prompts per class."),
    n_val: int = typer.Option(32, help="Validation prompts per class (calibration)."),
    ig_steps: int = typer.Option(10, help="Integrated-gradient interpolation steps."),
    seed: int = typer.Option(0, help="Seed of the splits and samples."),
    judge: str = typer.Option("substring", help="Judge of the calibration's refusal rates."),
    dtype: str = typer.Option(None, help="Model dtype."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Score SAE latents on train prompts, pick the global and per-prompt sets, and calibrate the bypass and induction on validation prompts."""
    from ..models import load_model
    from ..runs.features import FeaturesConfig, find_features

    config = FeaturesConfig(method=method, k=k, max_harmless_firing=max_harmless_firing, harmful=harmful, harmless=harmless, n_train=n_train, n_val=n_val, ig_steps=ig_steps,
                            seed=seed, judge=judge)
    refs = _sae_refs(saes, model)
    lm = load_model(model, dtype=dtype)
    features = find_features(lm, direction, refs, out, config, model_spec=model)
    summary = {"features": str(out / "features.json"), "method": features.method, "saes": list(features.saes),
               "bypass": {k: v for k, v in features.calibration.get("bypass", {}).items() if k != "table"},
               "induce": {k: v for k, v in features.calibration.get("induce", {}).items() if k != "table"},
               "global": [f"{r.sae}:{r.index}" for r in features.ranked()]}
    if as_json:
        print_json(summary)
        return
    _print_sets(features, limit=k)
    console.print(f"bypass: K*={summary['bypass'].get('k')} x c={summary['bypass'].get('scale')}; "
                  f"induce: set to {summary['induce'].get('value')}  -> steer with latents:{out} or latents:{out}:induce")


def _print_sets(features, limit: int) -> None:
    table = Table(title=f"refusal latents ({features.method})")
    for col in ("rank", "SAE", "point", "latent", "score", "cosine", "attribution", "ActDiff", "harmful firing", "harmless firing"):
        table.add_column(col)
    for rank, ref in enumerate(features.ranked()[:limit], 1):
        d = features.details.get(f"{ref.sae}:{ref.index}", {})

        def fmt(key: str) -> str:
            value = d.get(key)
            return "" if value is None else f"{value:.3g}"

        table.add_row(str(rank), ref.sae, features.saes[ref.sae]["point"], str(ref.index), f"{ref.score:.3g}", fmt("cosine"), fmt("attribution"),
                      fmt("actdiff"), fmt("harmful_firing"), fmt("harmless_firing"))
    console.print(table)


@features_app.command("show")
def show(
    features_dir: Path = typer.Argument(..., help="A folder written by 'features find' (FDIR)."),
    limit: int = typer.Option(20, help="Latents to list."),
    as_json: bool = typer.Option(False, "--json", help="Print features.json's sets and calibration as JSON."),
) -> None:
    """List the selected latents with their scores, the baselines' sets and the calibration."""
    from ..features import load_features

    features = load_features(features_dir)
    if as_json:
        data = features.to_json()
        print_json({key: data[key] for key in ("method", "saes", "global", "sets", "calibration", "hyperparameters")})
        return
    _print_sets(features, limit)
    for name, items in features.sets.items():
        if name != "selected":
            console.print(f"[bold]{name}[/bold]: " + ", ".join(f"{r.sae}:{r.index}" for r in items[:limit]))
    bypass, induce = features.calibration.get("bypass", {}), features.calibration.get("induce", {})
    if bypass:
        console.print(f"bypass (chosen on {bypass.get('split')} by {bypass.get('judge')}): K*={bypass.get('k')}, c={bypass.get('scale')}")
    if induce:
        console.print(f"induce (chosen on {induce.get('split')} by {induce.get('judge')}): value={induce.get('value')}")
    cards = Path(features_dir) / "cards.md"
    if cards.is_file():
        from rich.markdown import Markdown

        console.print(Markdown(cards.read_text()))
    else:
        console.print(f"no feature cards in {features_dir} (features find writes cards.md unless card_tokens is 0)")


@features_app.command("upstream")
def upstream(
    model: str = typer.Option("default", "--model", "-m", help="'default', a local dir, a .gguf file or a hub id."),
    direction: Path = typer.Option(..., "--direction", help="Direction folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (upstream.json; attribution resumes)."),
    saes: str = typer.Option(None, "--saes", help="Comma-separated SAE folders or shipped names (default model: every shipped SAE)."),
    dataset: str = typer.Option("harmbench-val+harmbench-test", help="Prompts with meta['semantic_category'] (HarmBench's)."),
    split: str = typer.Option("train", help="Split of the dataset (train keeps test prompts unseen)."),
    k: int = typer.Option(20, "--k", help="Latents per category set."),
    min_prompts: int = typer.Option(8, help="Leave out categories with fewer prompts."),
    as_json: bool = typer.Option(False, "--json", help="Print upstream.json."),
) -> None:
    """Refusal latents (shared by every harm category) vs harm latents (category-specific), and how much the first drop downstream when the second are clamped (Yeo et al. 2025, section 4)."""
    from ..models import load_model
    from ..runs.features import UpstreamConfig, upstream_downstream

    config = UpstreamConfig(dataset=dataset, split=split, k=k, min_prompts=min_prompts)
    refs = _sae_refs(saes, model)
    lm = load_model(model)
    summary = upstream_downstream(lm, direction, refs, out, config)
    if as_json:
        print_json(summary)
        return
    drop = summary["relative_drop"]
    console.print(f"{len(summary['common'])} refusal latents shared by {len(summary['categories'])} categories; clamping each category's harm "
                  f"latents lowers them by {drop['mean']:.3f} (95% CI {drop['ci95'][0]:.3f}-{drop['ci95'][1]:.3f}, n={drop['n']} prompts; "
                  f"firing-matched random-latent control {summary['control_random_latents']['mean']:.3f}). Yeo et al. report 0.45.")
