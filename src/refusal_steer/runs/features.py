"""``features find``: score SAE latents for refusal on train prompts, pick sets, calibrate on validation prompts.

Stages (each resumable, its outputs in ``FDIR``):

1. ``scores``: cosine of every decoder row with the refusal direction; each train prompt's max activation
   of every latent (harmful and harmless); attribution patching with integrated gradients on the harmful
   train prompts (:mod:`refusal_steer.features.attribution`, saved batch by batch) -> ``scores.safetensors``;
2. ``select``: the method's per-prompt and global top-k sets, and the baselines' global sets from the same
   scores (CosSim, ActDiff, attribution without the cosine pool);
3. ``calibrate``: the bypass's K* and multiplier c on *validation* prompts: every (K, c) in the grid is
   screened by the harmful refusal log-odds and the harmless KL, the best ``judge_top`` with KL <= ``kl_max``
   are judged by generation, and the lowest judged harmful refusal rate wins; then the induction's set value
   by the judged harmless refusal rate with looping completions <= ``max_loop_rate``.
   Test prompts are never used (they are what :mod:`.compare` and ``eval`` measure on).

This lives in the run layer because calibration needs the judges of :mod:`refusal_steer.evaluation`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..data import load_dataset, load_prompts
from ..directions.io import load_ablation_direction
from ..errors import ConfigError
from ..evaluation.refusal import evaluate_refusal
from ..features.attribution import attribute, check_points
from ..features.cards import cards_markdown, feature_cards
from ..features.featureset import FeatureSet, LatentRef, clamp_steer
from ..features.upstream import bootstrap_mean_ci, downstream_drop, firing_matched, split_common_specific
from ..features.scores import cosine_scores, global_top, max_activation_diff, max_activations, per_sae_top
from ..hooks import HookPoint
from ..models.loaded import LoadedModel
from ..sae.base import Sae
from ..report.render import markdown_to_html
from ..sae.corpus import mix_token_lists, template_prefix_length
from ..sae.io import load_sae
from .rundir import RunDir, stable_hash, write_json
from .screen import screen_settings, within_kl

logger = logging.getLogger(__name__)

METHODS = ("cossim+attribution", "attribution", "cossim", "actdiff")
SCORE_FIELDS = ("ig_steps", "harmful", "harmless", "n_train", "seed", "system")
"""The :class:`FeaturesConfig` fields the ``scores`` stage depends on."""


@dataclass(frozen=True)
class FeaturesConfig:
    """What ``features find`` runs (every field is recorded in ``features.json``)."""

    method: str = "cossim+attribution"
    k: int = 20
    """Latents per set (Yeo et al.'s K* = 20)."""
    pool_per_sae: int = 10
    """Cosine pool: the top latents per SAE by decoder cosine (Yeo et al.: 10 per layer)."""
    max_harmless_firing: float = 0.5
    """The selected set leaves out latents that fire (after the template prefix) on more than this share of the harmless
    train prompts: they are not specific to harmful requests, and clamping them costs harmless KL. 1.0 keeps Yeo et
    al.'s recipe exactly; their unfiltered set is kept under the method's name either way."""
    ig_steps: int = 10
    harmful: str = "advbench"
    harmless: str = "harmless"
    n_train: int = 128
    n_val: int = 32
    seed: int = 0
    batch_size: int = 8
    attribution_batch_size: int = 4
    k_grid: tuple[int, ...] = (5, 10, 20)
    scale_grid: tuple[float, ...] = (0.0, -1.0, -2.0, -3.0)
    induce_multipliers: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0, 8.0)
    """Induction set values tried: these multiples of the set's mean max activation on harmful train prompts."""
    judge: str = "substring"
    judge_top: int = 3
    kl_max: float = 0.10
    max_loop_rate: float = 0.05
    max_new_tokens: int = 32
    generation_batch_size: int = 32
    card_tokens: int = 20_000
    """Held-out (test split) chat-mix tokens the feature cards' top contexts and firing frequencies come from; 0: no cards."""
    n_contexts: int = 5
    system: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}", fix=f"use one of {', '.join(METHODS)}")
        if not 0.0 < self.max_harmless_firing <= 1.0:
            raise ConfigError(f"max_harmless_firing={self.max_harmless_firing} must be in (0, 1]", fix="pass a share such as 0.5 (1 = no filter)")
        if self.k < 1 or self.k > 100:
            raise ConfigError(f"k={self.k} must be in 1..100")
        if any(k > self.k for k in self.k_grid):
            object.__setattr__(self, "k_grid", tuple(k for k in self.k_grid if k <= self.k) or (self.k,))


def _refusal_ids(direction_dir: Path) -> list[int]:
    file = direction_dir / "refusal_tokens.json"
    if not file.is_file():
        raise ConfigError(f"{file} is missing", fix="point --direction at a folder written by 'refusal-steer direction' or the demo")
    return [int(i) for i in json.loads(file.read_text())["token_ids"]]


def _sae_names(saes: dict[str, Sae]) -> dict[str, HookPoint]:
    points = {}
    for name, sae in saes.items():
        if sae.cfg.point is None:
            raise ConfigError(f"SAE {name!r} records no hook point", fix="load it with its point (sae info shows it)")
        points[name] = HookPoint.parse(sae.cfg.point)
    check_points(points)
    return points


def load_saes(references: list[str], lm: LoadedModel) -> dict[str, Sae]:
    """``{reference: SAE}`` for folders or shipped names, on the model's device, checked against its width."""
    if not references:
        raise ConfigError("no SAEs given", fix="pass --saes DIR,DIR,... (or use the default model, which ships its own)")
    return {ref: load_sae(ref, d_model=lm.d_model, device=lm.device) for ref in references}


def _scores(lm: LoadedModel, saes: dict[str, Sae], points: dict[str, HookPoint], direction: torch.Tensor, refusal_ids: list[int],
            harmful: list[str], harmless: list[str], config: FeaturesConfig, skip: int, out: RunDir, progress: bool) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, values in cosine_scores(saes, direction).items():
        tensors[f"cosine/{name}"] = values
    hmax = max_activations(lm, saes, points, harmful, skip_tokens=skip, batch_size=config.batch_size, system=config.system, progress=progress)
    lmax = max_activations(lm, saes, points, harmless, skip_tokens=skip, batch_size=config.batch_size, system=config.system, progress=progress)
    for name in saes:
        tensors[f"harmful_max/{name}"] = hmax[name]
        tensors[f"harmless_max/{name}"] = lmax[name]
    if "attribution" in config.method:  # the attribution-only baseline comes from the same passes
        partial = out.file("attribution-partial") / stable_hash([harmful, config.ig_steps, sorted(points), str(direction.sum().item())])
        attr = attribute(lm, saes, points, harmful, direction, refusal_ids, steps=config.ig_steps, batch_size=config.attribution_batch_size,
                         skip_tokens=skip, system=config.system, progress=progress, partial_dir=partial)
        for name, values in attr.items():
            tensors["metric" if name == "_metric" else f"attribution/{name}"] = values
    return tensors


def _select(tensors: dict[str, torch.Tensor], names: list[str], config: FeaturesConfig) -> tuple[dict[str, list[LatentRef]], list[list[LatentRef]], dict]:
    cos = {n: tensors[f"cosine/{n}"] for n in names}
    has_attr = all(f"attribution/{n}" in tensors for n in names)
    attr = {n: tensors[f"attribution/{n}"] for n in names} if has_attr else {}
    actdiff = max_activation_diff({n: tensors[f"harmful_max/{n}"] for n in names}, {n: tensors[f"harmless_max/{n}"] for n in names})
    mean_attr = {n: a.mean(0) for n, a in attr.items()}
    pool = per_sae_top(cos, config.pool_per_sae)

    def refs(entries: list[tuple[str, int, float]]) -> list[LatentRef]:
        return [LatentRef(s, i, v) for s, i, v in entries]

    sets = {
        "cossim": refs(global_top(cos, config.k)),
        "actdiff": refs(global_top(actdiff, config.k)),
    }
    if has_attr:
        sets["attribution"] = refs(global_top(mean_attr, config.k))
        sets["cossim+attribution"] = refs(global_top(mean_attr, config.k, pool=pool))
    specific = harmless_specific(tensors, names, config.max_harmless_firing)
    method_scores = {"cossim": cos, "actdiff": actdiff, "attribution": mean_attr, "cossim+attribution": mean_attr}[config.method]
    method_pool = pool if config.method == "cossim+attribution" else None
    use_pool = restrict_pool(method_pool, specific)
    sets["selected"] = refs(global_top(method_scores, config.k, pool=use_pool)) if specific is not None else sets[config.method]
    per_prompt = []
    if has_attr:
        for i in range(next(iter(attr.values())).shape[0]):
            per_prompt.append(refs(global_top({n: a[i] for n, a in attr.items()}, config.k, pool=use_pool)))
    details: dict[str, dict[str, float]] = {}
    for items in sets.values():
        for r in items:
            details[f"{r.sae}:{r.index}"] = {"cosine": float(cos[r.sae][r.index]), "attribution": float(mean_attr[r.sae][r.index]) if has_attr else None,
                                             "actdiff": float(actdiff[r.sae][r.index]),
                                             "harmful_max": float(tensors[f"harmful_max/{r.sae}"][:, r.index].max()),
                                             "harmful_firing": float((tensors[f"harmful_max/{r.sae}"][:, r.index] > 0).float().mean()),
                                             "harmless_firing": float((tensors[f"harmless_max/{r.sae}"][:, r.index] > 0).float().mean())}
    return sets, per_prompt, details


def harmless_specific(tensors: dict[str, torch.Tensor], names: list[str], max_firing: float) -> dict[str, torch.Tensor] | None:
    """Per SAE, the latents firing on at most ``max_firing`` of the harmless train prompts (None: no filter)."""
    if max_firing >= 1.0:
        return None
    return {n: torch.nonzero((tensors[f"harmless_max/{n}"] > 0).float().mean(0) <= max_firing).flatten() for n in names}


def restrict_pool(pool: dict[str, torch.Tensor] | None, keep: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The indices in both ``pool`` and ``keep`` per SAE (either may be None: no restriction)."""
    if pool is None:
        return keep
    if keep is None:
        return pool
    return {n: idx[torch.isin(idx, keep[n])] for n, idx in pool.items()}


def _mean_max(features: FeatureSet, latents: list[LatentRef], tensors: dict[str, torch.Tensor]) -> float:
    values = [float(tensors[f"harmful_max/{r.sae}"][:, r.index].mean()) for r in latents]
    return max(sum(values) / max(len(values), 1), 1e-3)


def _calibrate_bypass(lm: LoadedModel, features: FeatureSet, saes: dict[str, Sae], val_harmful: list[str], val_harmless: list[str],
                      refusal_ids: list[int], config: FeaturesConfig, progress: bool) -> dict[str, Any]:
    def build(setting: dict[str, Any]):
        return clamp_steer(features, features.ranked("selected", setting["k"]), mode="scale", value=setting["scale"], saes=saes)

    grid = [{"k": k, "scale": c} for k in config.k_grid for c in config.scale_grid]
    table = screen_settings(lm, grid, build, val_harmful, val_harmless, refusal_ids, batch_size=config.batch_size, system=config.system,
                            desc="bypass grid (K x c, val)", progress=progress)
    for row in table:
        logger.info("bypass k=%d c=%g: log-odds %.3f, KL %.4f", row["k"], row["scale"], row["harmful_log_odds"], row["harmless_kl"])
    for row in within_kl(table, config.kl_max)[: config.judge_top]:
        steer = clamp_steer(features, features.ranked("selected", row["k"]), mode="scale", value=row["scale"], saes=saes)
        result = evaluate_refusal(lm, val_harmful, steer, judge=config.judge, max_new_tokens=config.max_new_tokens,
                                  batch_size=config.generation_batch_size, system=config.system, progress=progress, split="val")
        row.update(judged_refusal=result.rate.value, n=result.rate.n, ci95=list(result.ci95), loop_rate=result.degenerate_rate.value)
    judged = [row for row in table if "judged_refusal" in row]
    best = min(judged, key=lambda r: (r["judged_refusal"], r["harmless_kl"], r["k"]))
    return {"k": best["k"], "scale": best["scale"], "judge": config.judge, "split": "val", "kl_max": config.kl_max, "table": table,
            "n_harmful": len(val_harmful), "n_harmless": len(val_harmless)}


def _calibrate_induce(lm: LoadedModel, features: FeatureSet, saes: dict[str, Sae], val_harmless: list[str], tensors: dict[str, torch.Tensor],
                      config: FeaturesConfig, progress: bool) -> dict[str, Any]:
    latents = features.ranked("selected", config.k)
    scale = _mean_max(features, latents, tensors)
    table = []
    for i, m in enumerate(config.induce_multipliers):
        value = round(m * scale, 4)
        steer = clamp_steer(features, latents, mode="set", value=value, saes=saes)
        result = evaluate_refusal(lm, val_harmless, steer, judge=config.judge, max_new_tokens=config.max_new_tokens,
                                  batch_size=config.generation_batch_size, system=config.system, progress=progress, split="val")
        table.append({"multiplier": m, "value": value, "judged_refusal": result.rate.value, "n": result.rate.n, "ci95": list(result.ci95),
                      "loop_rate": result.degenerate_rate.value})
        logger.info("induce value %.3f: refusal %.3f, loops %.3f", value, result.rate.value, result.degenerate_rate.value)
        reached = [r["multiplier"] for r in table if r["judged_refusal"] >= 0.9 and r["loop_rate"] <= config.max_loop_rate]
        if reached and all(x > min(reached) for x in config.induce_multipliers[i + 1:]):
            # The smallest value reaching 0.9 within the loop limit wins and every multiplier left is larger: they
            # cannot change the choice, so they are not generated.
            break
    ok = [r for r in table if r["loop_rate"] <= config.max_loop_rate] or table
    reaching = [r for r in ok if r["judged_refusal"] >= 0.9]
    best = min(reaching, key=lambda r: r["value"]) if reaching else max(ok, key=lambda r: (r["judged_refusal"], -r["value"]))
    return {"k": config.k, "value": best["value"], "judge": config.judge, "split": "val", "mean_max_activation": scale, "table": table,
            "max_loop_rate": config.max_loop_rate, "n_harmless": len(val_harmless)}


def find_features(lm: LoadedModel, direction_dir: str | Path, sae_refs: list[str], out_dir: str | Path, config: FeaturesConfig = FeaturesConfig(),
                  *, model_spec: str = "", progress: bool = True) -> FeatureSet:
    """Run (or resume) latent discovery and calibration; write ``out_dir/features.json`` and return it."""
    direction_dir = Path(direction_dir)
    saved = load_ablation_direction(direction_dir)
    refusal_ids = _refusal_ids(direction_dir)
    saes = load_saes(sae_refs, lm)
    points = _sae_names(saes)
    names = list(saes)
    skip = template_prefix_length(lm)
    out = RunDir(Path(out_dir))
    harmful = load_prompts(config.harmful, split="train", limit=config.n_train, seed=config.seed)
    harmless = load_prompts(config.harmless, split="train", limit=config.n_train, seed=config.seed)
    val_harmful = load_prompts(config.harmful, split="val", limit=config.n_val, seed=config.seed)
    val_harmless = load_prompts(config.harmless, split="val", limit=config.n_val, seed=config.seed)
    write_json(out.file("prompts.json"), {"train_harmful": harmful, "train_harmless": harmless, "val_harmful": val_harmful, "val_harmless": val_harmless})
    base_inputs = {"config": asdict(config), "saes": sae_refs, "direction": str(saved.direction.sum().item()), "model": model_spec, "skip": skip}
    # The scores depend on these fields only: changing a selection or calibration setting must not redo them.
    score_inputs = {**base_inputs, "config": {f: getattr(config, f) for f in SCORE_FIELDS}, "attribution": "attribution" in config.method}

    started = time.time()
    if not out.is_done("scores", score_inputs, ["scores.safetensors"]):
        tensors = _scores(lm, saes, points, saved.direction, refusal_ids, harmful, harmless, config, skip, out, progress)
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(out.file("scores.safetensors")))
        out.mark_done("scores", score_inputs, time.time() - started)
    tensors = load_file(str(out.file("scores.safetensors")))
    sets, per_prompt, details = _select(tensors, names, config)
    sae_info = {name: {"source": getattr(saes[name], "source", name), "point": str(points[name]), "d_sae": saes[name].cfg.d_sae} for name in names}
    features = FeatureSet(model=model_spec, method=config.method, saes=sae_info, skip_tokens=skip, sets=sets, per_prompt=per_prompt, details=details,
                          max_activation={f"{r.sae}:{r.index}": d["harmful_max"] for r in sets["selected"] for d in [details[f"{r.sae}:{r.index}"]]},
                          hyperparameters={**asdict(config), "direction": str(direction_dir), "direction_point": str(saved.point),
                                           "refusal_token_ids": refusal_ids, "seconds_scores": time.time() - started},
                          prompts={"train_harmful": len(harmful), "train_harmless": len(harmless), "val_harmful": len(val_harmful),
                                   "val_harmless": len(val_harmless), "file": "prompts.json"})
    metric = tensors.get("metric")
    if metric is not None:
        features.hyperparameters["metric_clean_mean"] = float(metric[:, 0].mean())
        features.hyperparameters["metric_patched_mean"] = float(metric[:, 1].mean())
    calib_inputs = {**base_inputs, "sets": [[r.sae, r.index] for r in sets["selected"]]}
    if out.is_done("calibrate", calib_inputs, ["calibration.json"]):
        features.calibration = json.loads(out.file("calibration.json").read_text())
    else:
        t0 = time.time()
        bypass = _calibrate_bypass(lm, features, saes, val_harmful, val_harmless, refusal_ids, config, progress)
        induce = _calibrate_induce(lm, features, saes, val_harmless, tensors, config, progress)
        features.calibration = {"bypass": bypass, "induce": induce, "seconds": time.time() - t0}
        write_json(out.file("calibration.json"), features.calibration)
        out.mark_done("calibrate", calib_inputs, time.time() - t0)
    features.save(out.path)
    if config.card_tokens > 0:
        # The cards depend on the selected set, not on the calibration grid: changing the grid must not redo them.
        card_inputs = {**score_inputs, "sets": calib_inputs["sets"], "k": config.k, "n_contexts": config.n_contexts}
        _cards(lm, saes, features, val_harmful, refusal_ids, config, out, card_inputs, progress)
    return features


def _cards(lm: LoadedModel, saes: dict[str, Sae], features: FeatureSet, val_harmful: list[str], refusal_ids: list[int], config: FeaturesConfig,
           out: RunDir, inputs: dict[str, Any], progress: bool = True) -> None:
    """The ``cards`` stage: ``cards.json``, ``cards.md`` and ``cards.html`` for the selected set."""
    inputs = {**inputs, "calibration": features.calibration.get("bypass", {}).get("scale"), "card_tokens": config.card_tokens}
    if out.is_done("cards", inputs, ["cards.json", "cards.md", "cards.html"]):
        return
    t0 = time.time()
    sequences, _ = mix_token_lists(lm, config.card_tokens, split="test", seed=config.seed)
    cards = feature_cards(lm, saes, features, sequences, val_harmful=val_harmful, refusal_ids=refusal_ids, limit=config.k,
                          n_contexts=config.n_contexts, batch_size=config.batch_size, system=config.system, progress=progress)
    write_json(out.file("cards.json"), {"source": "sae mix, test split", "n_sequences": len(sequences), "cards": [c.to_json() for c in cards]})
    text = cards_markdown(cards, title=f"Refusal latents ({features.method}): feature cards")
    out.file("cards.md").write_text(text)
    out.file("cards.html").write_text(markdown_to_html(text, title="refusal-steer feature cards"))
    out.mark_done("cards", inputs, time.time() - t0)


__all__ = ["FeaturesConfig", "METHODS", "find_features", "load_saes"]


@dataclass(frozen=True)
class UpstreamConfig:
    """Yeo et al. §4 on HarmBench's semantic categories (train split, so test prompts stay unseen)."""

    dataset: str = "harmbench-val+harmbench-test"
    split: str = "train"
    min_prompts: int = 8
    """Categories with fewer prompts are left out (their global set would be noise)."""
    k: int = 20
    pool_per_sae: int = 10
    ig_steps: int = 10
    attribution_batch_size: int = 4
    batch_size: int = 8
    seed: int = 0
    system: str | None = None


def upstream_downstream(lm: LoadedModel, direction_dir: str | Path, sae_refs: list[str], out_dir: str | Path,
                        config: UpstreamConfig = UpstreamConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Refusal (shared) vs harm (category-specific) latents, and the downstream drop of the first when the second are clamped.

    Writes ``out_dir/upstream.json``: the categories with n, the common set, each category's specific set, and
    the relative drop of the common latents' activation (mean with a bootstrap 95% CI, pooled and per category),
    beside a control that clamps as many random latents of the same SAEs.
    """
    direction_dir = Path(direction_dir)
    saved = load_ablation_direction(direction_dir)
    refusal_ids = _refusal_ids(direction_dir)
    saes = load_saes(sae_refs, lm)
    points = _sae_names(saes)
    skip = template_prefix_length(lm)
    out = RunDir(Path(out_dir))
    records = list(load_dataset(config.dataset, split=config.split, seed=config.seed))
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_cat.setdefault(str(r.meta.get("semantic_category", "")), []).append(i)
    cats = {c: rows for c, rows in by_cat.items() if c and len(rows) >= config.min_prompts}
    if len(cats) < 2:
        raise ConfigError(f"{config.dataset} ({config.split}) has fewer than two semantic categories with >= {config.min_prompts} prompts",
                          fix="use a dataset whose records carry meta['semantic_category'] (HarmBench) or lower min_prompts")
    prompts = [r.prompt for r in records]
    partial = out.file("attribution-partial") / stable_hash([prompts, config.ig_steps, sorted(points), str(saved.direction.sum().item())])
    attr = attribute(lm, saes, points, prompts, saved.direction, refusal_ids, steps=config.ig_steps, batch_size=config.attribution_batch_size,
                     skip_tokens=skip, system=config.system, progress=progress, partial_dir=partial)
    pool = per_sae_top(cosine_scores(saes, saved.direction), config.pool_per_sae)
    sets = {c: [LatentRef(s, i, v) for s, i, v in global_top({n: attr[n][rows].mean(0) for n in saes}, config.k, pool=pool)]
            for c, rows in cats.items()}
    common, specific = split_common_specific(sets)
    generator = torch.Generator().manual_seed(config.seed)
    per_cat: dict[str, Any] = {}
    pooled, control = [], []
    # Firing rates for the control, from one pass over every category's prompts (each category reads its own rows).
    specific_saes = sorted({s for spec in specific.values() for s, _ in spec})
    fired = {n: v > 0 for n, v in max_activations(lm, {n: saes[n] for n in specific_saes}, {n: points[n] for n in specific_saes}, prompts,
                                                  skip_tokens=skip, batch_size=config.batch_size, system=config.system).items()}
    for c, rows in cats.items():
        cat_prompts = [prompts[i] for i in rows]
        result = downstream_drop(lm, saes, points, cat_prompts, specific[c], common, skip_tokens=skip, batch_size=config.batch_size, system=config.system)
        firing = {n: f[rows].float().mean(0) for n, f in fired.items()}
        random_latents = firing_matched(firing, specific[c], common, generator)
        ctrl = downstream_drop(lm, saes, points, cat_prompts, random_latents, common, skip_tokens=skip, batch_size=config.batch_size, system=config.system)
        mean, lo, hi = bootstrap_mean_ci(result["relative_drop"], seed=config.seed)
        per_cat[c] = {"n": len(rows), "specific": specific[c], "measured": result["measured"], "relative_drop": mean, "ci95": [lo, hi],
                      "control_latents": random_latents, "control_relative_drop": bootstrap_mean_ci(ctrl["relative_drop"], seed=config.seed)[0],
                      "specific_firing": [float(firing[s][i]) for s, i in specific[c]], "control_firing": [float(firing[s][i]) for s, i in random_latents]}
        pooled.append(result["relative_drop"])
        control.append(ctrl["relative_drop"])
    mean, lo, hi = bootstrap_mean_ci(torch.cat(pooled), seed=config.seed)
    cmean, clo, chi = bootstrap_mean_ci(torch.cat(control), seed=config.seed)
    summary = {"config": asdict(config), "n_prompts": sum(len(r) for r in cats.values()), "categories": per_cat, "common": common,
               "relative_drop": {"mean": mean, "ci95": [lo, hi], "n": int(torch.cat(pooled).numel()), "method": "percentile bootstrap over prompts"},
               "control_random_latents": {"mean": cmean, "ci95": [clo, chi],
                                          "method": "as many latents of the same SAEs, each drawn among the 20 whose firing rate on the category's prompts is nearest its harm latent's"},
               "note": "relative drop = 1 - (summed activation of the common latents with the category's specific latents set to 0) / (clean)"}
    write_json(out.file("upstream.json"), summary)
    return summary


__all__ += ["UpstreamConfig", "upstream_downstream"]
