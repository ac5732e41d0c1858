"""``refusal-steer compare``: top-down vs bottom-up steerers on the same held-out test prompts, seed and judge.

Steerers (Kapros 2025, plus Yeo et al.'s latent clamp and its baselines):

- ``baseline``: no steer;
- ``topdown``: the refusal direction ablated at every residual write (``ablate:DIR``);
- ``saem3``: the SAE-reconstructed direction at the direction's layer and position, ablated the same way;
- ``sae``: the top refusal latent of the SAE at the direction's layer, its decoder row x max activation x a
  coefficient added there (the coefficient chosen on *validation* prompts by refusal log-odds, KL <= 0.1);
- ``hybrid``: the direction ablated at that layer plus the latent addition; ``hybrid2``: hybrid plus ``topdown``;
- ``latents``: the calibrated latent clamp of ``features.json`` (``latents:FDIR``); ``latents-cossim``,
  ``latents-actdiff``, ``latents-attribution``: the same K* and c on Yeo et al.'s baseline sets;
  ``latents-unfiltered``: the same on the method's set before latents firing on most harmless prompts are left
  out (Yeo et al.'s own recipe; only when the filter changed the set);
- on harmless prompts, also ``latents-induce`` (``latents:FDIR:induce``) and ``actadd`` (``actadd:DIR``).

Each steerer x class gets a result record (refusal rate with n and CI and judge; harmless KL with a bootstrap
CI; the looping rate), written to ``CDIR/compare.json`` with a bar chart (``compare.png``) and a report
section (``compare.md``) that says whether Kapros's ranking (top-down > bottom-up, hybrid > bottom-up) holds.
Every cell is stored as it finishes (``CDIR/cells``), keyed by the steer's fingerprint, so a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import load_dataset
from ..directions.io import load_ablation_direction
from ..directions.steers import resolve_actadd
from ..errors import ConfigError
from ..evaluation.kl import evaluate_kl
from ..evaluation.agreement import two_judges
from ..evaluation.refusal import evaluate_refusal, evaluate_refusal_per_prompt, judge_completions
from ..features.attribution import attribute
from ..features.featureset import FeatureSet, LatentRef, bypass_steer, clamp_steer, induce_steer, load_feature_saes, load_features
from ..features.scores import cosine_scores, global_top, per_sae_top
from ..features.steerers import hybrid2_steer, hybrid_steer, latent_add_steer, saem3_direction
from ..batching import record_batch
from ..generation import encode_prompts
from ..hooks import HookPoint, Intervention
from ..interventions import all_layers_ablation, fingerprint
from ..models.loaded import LoadedModel
from ..report.plots import plot_steerer_comparison
from ..sae.base import Sae
from .rundir import RunDir, stable_hash, write_json
from .screen import screen_settings, within_kl

logger = logging.getLogger(__name__)

BYPASS = ("baseline", "topdown", "saem3", "sae", "hybrid", "hybrid2", "latents", "latents-unfiltered", "latents-cossim", "latents-actdiff",
          "latents-attribution", "latents-per-prompt")
INDUCE = ("latents-induce", "actadd")


@dataclass(frozen=True)
class CompareConfig:
    """The test prompts, judge and generation settings of a comparison."""

    harmful: str = "advbench"
    harmless: str = "harmless"
    limit: int = 100
    seed: int = 0
    judge: str = "substring"
    second_judge: str | None = "ngram-lr"
    """Re-reads every cell's saved answers (no generation): its rate and agreement with ``judge`` go in the cell."""
    max_new_tokens: int = 32
    batch_size: int = 8
    generation_batch_size: int = 32
    latent_coefs: tuple[float, ...] = (-0.5, -1.0, -2.0, -4.0)
    kl_max: float = 0.10
    steerers: tuple[str, ...] = BYPASS + INDUCE
    system: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.steerers) - set(BYPASS + INDUCE))
        if unknown:
            raise ConfigError(f"unknown steerer(s) {unknown}", fix=f"choose from {', '.join(BYPASS + INDUCE)}")
        if self.limit < 1:
            raise ConfigError(f"--limit {self.limit} must be >= 1")


def _sae_at(features: FeatureSet, point: HookPoint) -> str:
    """The feature set's SAE at ``point``, else the one at the nearest layer."""
    names = list(features.saes)
    exact = [n for n in names if features.point(n) == point]
    if exact:
        return exact[0]
    return min(names, key=lambda n: abs(features.point(n).layer - point.layer))


def _position_acts(lm: LoadedModel, prompts: list[str], point: HookPoint, position: int, batch_size: int, system: str | None) -> torch.Tensor:
    """Activations ``(n, d)`` at ``point`` and ``position`` (counted from the end) of each chat-formatted prompt."""
    tokens = encode_prompts(lm, prompts, system=system)
    out = [record_batch(lm, tokens[start:start + batch_size], [point], share_prefix=False)[point][:, position].float().cpu()
           for start in range(0, len(tokens), batch_size)]
    return torch.cat(out)


def _latent_choice(features: FeatureSet, sae_name: str) -> tuple[int, float]:
    """The highest-ranked selected latent in ``sae_name`` (else its top-cosine one) and its max activation."""
    for ref in features.ranked():
        if ref.sae == sae_name:
            return ref.index, float(features.details.get(f"{ref.sae}:{ref.index}", {}).get("harmful_max", 1.0))
    for ref in features.ranked("cossim"):
        if ref.sae == sae_name:
            return ref.index, float(features.details.get(f"{ref.sae}:{ref.index}", {}).get("harmful_max", 1.0))
    raise ConfigError(f"no latent of SAE {sae_name!r} is in any set of the features file", fix="re-run features find with this SAE")


def _calibrate_coef(lm: LoadedModel, build, val_harmful: list[str], val_harmless: list[str], refusal_ids: list[int],
                    config: CompareConfig) -> dict[str, Any]:
    table = screen_settings(lm, [{"coef": c} for c in config.latent_coefs], lambda s: build(s["coef"]), val_harmful, val_harmless,
                            refusal_ids, batch_size=config.batch_size, system=config.system, desc="latent coefficient (val)", progress=False)
    best = within_kl(table, config.kl_max)[0]
    return {"coef": best["coef"], "table": table, "split": "val", "kl_max": config.kl_max}


def build_steerers(lm: LoadedModel, direction_dir: Path, features_dir: Path, config: CompareConfig, out: RunDir) -> tuple[dict[str, list[Intervention]], dict]:
    """Every steerer of the comparison, as registered interventions, and how the chosen ones were set up."""
    saved = load_ablation_direction(direction_dir)
    features = load_features(features_dir)
    saes: dict[str, Sae] = load_feature_saes(features, lm)
    prompts = json.loads((Path(features_dir) / "prompts.json").read_text())
    refusal_ids = [int(i) for i in features.hyperparameters["refusal_token_ids"]]
    position = int(saved.metadata.get("position", -1))
    name = _sae_at(features, saved.point)
    sae, point = saes[name], features.point(name)
    latent, max_act = _latent_choice(features, name)
    setup: dict[str, Any] = {"direction": str(direction_dir), "direction_point": str(saved.point), "position": position, "sae": name,
                             "sae_point": str(point), "latent": latent, "max_activation": max_act}
    steers: dict[str, list[Intervention]] = {"baseline": [], "topdown": [all_layers_ablation(saved.direction, lm)]}
    if "saem3" in config.steerers:
        h_pos = _position_acts(lm, prompts["train_harmful"], point, position, config.batch_size, config.system)
        h_neg = _position_acts(lm, prompts["train_harmless"], point, position, config.batch_size, config.system)
        saem3 = saem3_direction(sae, h_pos, h_neg)
        setup["saem3_cosine_with_direction"] = float(torch.nn.functional.cosine_similarity(saem3, saved.direction.float(), dim=0))
        steers["saem3"] = [all_layers_ablation(saem3, lm)]
    coef_file = out.file("latent_coef.json")
    # Keyed by the latent it was chosen for: a features file that picks another latent recalibrates it.
    coef_key = {"sae": name, "latent": latent, "max_activation": max_act, "coefs": list(config.latent_coefs), "kl_max": config.kl_max}
    coef = json.loads(coef_file.read_text()) if coef_file.is_file() else None
    if coef is None or coef.get("key") != coef_key:
        coef = _calibrate_coef(lm, lambda c: latent_add_steer(sae, point, latent, max_act, c), prompts["val_harmful"], prompts["val_harmless"],
                               refusal_ids, config)
        coef["key"] = coef_key
        write_json(coef_file, coef)
    setup["latent_coef"] = coef
    c = coef["coef"]
    steers["sae"] = latent_add_steer(sae, point, latent, max_act, c)
    steers["hybrid"] = hybrid_steer(saved.direction, sae, point, latent, max_act, c)
    steers["hybrid2"] = hybrid2_steer(saved.direction, lm, sae, point, latent, max_act, c)
    steers["latents"] = bypass_steer(features, saes=saes)
    if features.method in features.sets and [r.key() for r in features.ranked(features.method)] != [r.key() for r in features.ranked()]:
        steers["latents-unfiltered"] = bypass_steer(features, which=features.method, saes=saes)
    for which in ("cossim", "actdiff", "attribution"):
        if which in features.sets:
            steers[f"latents-{which}"] = bypass_steer(features, which=which, saes=saes)
    if "induce" in features.calibration:
        steers["latents-induce"] = induce_steer(features, saes=saes)
    steers["actadd"] = resolve_actadd(str(direction_dir), {}, lm)
    return {k: v for k, v in steers.items() if k in config.steerers or k == "baseline"}, setup


def _test_prompts(config: CompareConfig, used: set[str]) -> dict[str, list[str]]:
    out = {}
    for cls, name in (("harmful", config.harmful), ("harmless", config.harmless)):
        prompts = [r.prompt for r in load_dataset(name, split="test", limit=config.limit, seed=config.seed)]
        if not prompts:
            raise ConfigError(f"dataset {name!r} has no test prompts")
        overlap = used & set(prompts)
        if overlap:
            raise ConfigError(f"{len(overlap)} test prompt(s) of {name!r} were used to fit or choose the steers (e.g. {sorted(overlap)[0]!r})",
                              fix="use different --harmful/--harmless sets or seeds for the comparison than for direction/features")
        out[cls] = prompts
    return out


def _cached_cell(out: RunDir, steer_name: str, cls: str, key: list[Any]) -> dict[str, Any] | None:
    file = out.file(f"cells/{steer_name}-{cls}.json")
    if file.is_file():
        cached = json.loads(file.read_text())
        if cached.get("key") == key:
            return cached
    return None


def _write_cell(out: RunDir, steer_name: str, cls: str, key: list[Any], result: Any, extra: dict[str, Any], seconds: float) -> dict[str, Any]:
    cell: dict[str, Any] = {"key": key, "steerer": steer_name, "class": cls, "refusal": result.record.to_dict(),
                            "loop_rate": result.degenerate_rate.value, "loop_ci95": list(result.degenerate_rate.ci95), **extra, "seconds": seconds}
    out.file("completions").mkdir(exist_ok=True)
    with open(out.file(f"completions/{steer_name}-{cls}.jsonl"), "w") as handle:
        for row in result.records():
            handle.write(json.dumps(row) + "\n")
    write_json(out.file(f"cells/{steer_name}-{cls}.json"), cell)
    return cell


def _with_second_judge(out: RunDir, cell: dict[str, Any], config: CompareConfig) -> dict[str, Any]:
    """Add ``config.second_judge``'s refusal rate on the cell's saved answers and its agreement with the first judge.

    Nothing is generated: the answers are read from ``CDIR/completions``. A cell whose answers are not there (copied
    in from elsewhere) keeps no second figure rather than a made-up one.
    """
    judge2 = config.second_judge
    if not judge2 or cell.get("second", {}).get("second_judge") == judge2:
        return cell
    file = out.file(f"completions/{cell['steerer']}-{cell['class']}.jsonl")
    if not file.is_file():
        return cell
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if len(rows) != cell["refusal"]["n"]:
        return cell
    verdicts = judge_completions(judge2, [r["prompt"] for r in rows], [r["text"] for r in rows])
    cell = {**cell, "second": two_judges([bool(r["refused"]) for r in rows], verdicts, judge2)}
    write_json(out.file(f"cells/{cell['steerer']}-{cell['class']}.json"), cell)
    return cell


def _cell(lm: LoadedModel, out: RunDir, steer_name: str, steer: list[Intervention], cls: str, prompts: list[str], config: CompareConfig,
          dataset: str, progress: bool) -> dict[str, Any]:
    key = [fingerprint(steer) if steer else "none", config.judge, config.max_new_tokens, len(prompts), config.seed, stable_hash(prompts)]
    cached = _cached_cell(out, steer_name, cls, key)
    if cached is not None:
        return cached
    t0 = time.time()
    result = evaluate_refusal(lm, prompts, steer, judge=config.judge, max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size,
                              seed=config.seed, system=config.system, progress=progress, dataset=dataset, split="test")
    extra: dict[str, Any] = {}
    if cls == "harmless" and steer:
        kl = evaluate_kl(lm, prompts, steer, batch_size=config.batch_size, seed=config.seed, system=config.system, dataset=dataset, split="test")
        extra["kl"] = kl.record.to_dict()
    return _write_cell(out, steer_name, cls, key, result, extra, time.time() - t0)


def per_prompt_steers(lm: LoadedModel, direction_dir: Path, features_dir: Path, prompts: list[str], out: RunDir, *, system: str | None = None,
                      progress: bool = True) -> tuple[list[list[Intervention]], list[list[LatentRef]]]:
    """Yeo et al.'s per-sample sets on ``prompts`` themselves: each prompt's own top-K* by attribution, clamped by the calibrated c.

    The sets are chosen on the very prompts they are evaluated on (in-sample by construction, as in the paper), so
    their refusal rate is an upper bound on what latents chosen elsewhere do; ``latents`` (the global set) is the
    held-out figure.
    """
    features = load_features(features_dir)
    hp = features.hyperparameters
    saes = load_feature_saes(features, lm)
    points = {name: features.point(name) for name in saes}
    direction = load_ablation_direction(direction_dir).direction
    refusal_ids = [int(i) for i in hp["refusal_token_ids"]]
    steps, batch_size = int(hp.get("ig_steps", 10)), int(hp.get("attribution_batch_size", 4))
    partial = out.file("attribution-partial") / stable_hash([prompts, steps, sorted(str(p) for p in points.values()), str(direction.sum().item())])
    attr = attribute(lm, saes, points, prompts, direction, refusal_ids, steps=steps, batch_size=batch_size, skip_tokens=features.skip_tokens,
                     system=system, progress=progress, partial_dir=partial)
    pool = per_sae_top(cosine_scores(saes, direction), int(hp.get("pool_per_sae", 10))) if features.method == "cossim+attribution" else None
    bypass = features.calibration.get("bypass", {})
    k, scale = int(bypass.get("k", hp.get("k", 20))), float(bypass.get("scale", 0.0))
    sets = [[LatentRef(s, i, v) for s, i, v in global_top({n: attr[n][row] for n in saes}, k, pool=pool)] for row in range(len(prompts))]
    return [clamp_steer(features, refs, mode="scale", value=scale, saes=saes) for refs in sets], sets


def _per_prompt_cell(lm: LoadedModel, out: RunDir, direction_dir: Path, features_dir: Path, prompts: list[str], config: CompareConfig,
                     progress: bool) -> dict[str, Any]:
    t0 = time.time()
    steers, sets = per_prompt_steers(lm, direction_dir, features_dir, prompts, out, system=config.system, progress=progress)
    prints = "\n".join(fingerprint(s) for s in steers)
    key = ["per-prompt:" + stable_hash(prints), config.judge, config.max_new_tokens, len(prompts), config.seed, stable_hash(prompts)]
    cached = _cached_cell(out, "latents-per-prompt", "harmful", key)
    if cached is not None:
        return cached
    result = evaluate_refusal_per_prompt(lm, prompts, steers, judge=config.judge, max_new_tokens=config.max_new_tokens, seed=config.seed,
                                         system=config.system, progress=progress, dataset=config.harmful, split="test")
    extra = {"in_sample": True, "sets": [[[r.sae, r.index] for r in refs] for refs in sets]}
    return _write_cell(out, "latents-per-prompt", "harmful", key, result, extra, time.time() - t0)


def kapros_verdict(cells: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Effectiveness = baseline harmful refusal minus the steerer's; does top-down beat bottom-up, and hybrid beat bottom-up?"""
    def rate(name: str) -> float | None:
        cell = cells.get((name, "harmful"))
        return None if cell is None else cell["refusal"]["value"]

    base = rate("baseline")
    eff = {n: (base - rate(n)) for n in ("topdown", "saem3", "sae", "hybrid", "hybrid2", "latents") if rate(n) is not None and base is not None}
    verdict: dict[str, Any] = {"effectiveness": eff, "definition": "baseline harmful refusal rate minus the steerer's (test prompts)"}
    if "topdown" in eff and "sae" in eff:
        verdict["topdown_over_sae"] = eff["topdown"] / eff["sae"] if eff["sae"] > 0 else None
        verdict["topdown_beats_sae"] = eff["topdown"] > eff["sae"]
    if "hybrid" in eff and "sae" in eff:
        verdict["hybrid_over_sae"] = eff["hybrid"] / eff["sae"] if eff["sae"] > 0 else None
        verdict["hybrid_beats_sae"] = eff["hybrid"] > eff["sae"]
    holds = verdict.get("topdown_beats_sae") and verdict.get("hybrid_beats_sae")
    verdict["kapros_ranking_holds"] = bool(holds)
    return verdict


def _report(out: RunDir, cells: dict[tuple[str, str], dict[str, Any]], verdict: dict[str, Any], setup: dict[str, Any], config: CompareConfig) -> Path:
    lines = ["## Top-down vs bottom-up steering", "",
             f"Held-out test prompts ({config.harmful} / {config.harmless}, test split, up to {config.limit} each), judge `{config.judge}`, "
             f"greedy, {config.max_new_tokens} new tokens. Rates with their 95% Wilson intervals; KL is the harmless next-token KL (bootstrap CI).", "",
             f"The second judge (`{config.second_judge}`) re-reads the same answers; its column gives its rate and its agreement with the first.", "",
             f"| steerer | harmful refusal (n, 95% CI) | harmful, {config.second_judge} (agreement) | harmless refusal (n, 95% CI) | "
             f"harmless, {config.second_judge} (agreement) | harmless KL (95% CI) | loops harmful / harmless |",
             "|---|---|---|---|---|---|---|"]
    names = list(dict.fromkeys(name for name, _ in cells))
    for name in names:
        def rate(cls: str) -> str:
            cell = cells.get((name, cls))
            if cell is None:
                return ""
            r = cell["refusal"]
            return f"{r['value']:.3f} ({r['n']}, {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"

        def second(cls: str) -> str:
            two = cells.get((name, cls), {}).get("second")
            if not two:
                return ""
            r, agree = two["second"], two["agreement"]["agreement"]["value"]
            return f"{r['value']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}; {agree:.2f})"

        kl_cell = cells.get((name, "harmless"), {}).get("kl")
        kl = f"{kl_cell['value']:.4f} ({kl_cell['ci95'][0]:.4f}-{kl_cell['ci95'][1]:.4f})" if kl_cell else ""
        loops = " / ".join(f"{cells[(name, c)]['loop_rate']:.3f}" if (name, c) in cells else "-" for c in ("harmful", "harmless"))
        shown = f"{name} (in-sample sets)" if cells.get((name, "harmful"), {}).get("in_sample") else name
        lines.append(f"| {shown} | {rate('harmful')} | {second('harmful')} | {rate('harmless')} | {second('harmless')} | {kl} | {loops} |")
    eff = verdict["effectiveness"]
    lines += ["", "Effectiveness (baseline harmful refusal minus the steerer's): " + ", ".join(f"{k} {v:.3f}" for k, v in eff.items()) + "."]
    if verdict.get("topdown_over_sae") is not None:
        lines.append(f"Top-down is {verdict['topdown_over_sae']:.2f}x as effective as the single-latent addition (Kapros: 1.93x); "
                     f"hybrid is {verdict.get('hybrid_over_sae') or float('nan'):.2f}x the latent addition (Kapros: +36% over it).")
    lines.append(f"Kapros's ranking (top-down > bottom-up and hybrid > bottom-up) **{'holds' if verdict['kapros_ranking_holds'] else 'does not hold'}** on this model.")
    lines += ["", f"Setup: SAE `{setup['sae']}` at {setup['sae_point']}, latent {setup['latent']} (max activation {setup['max_activation']:.3g}), "
              f"coefficient {setup['latent_coef']['coef']} chosen on validation prompts; direction at {setup['direction_point']} position {setup['position']}."]
    path = out.file("compare.md")
    path.write_text("\n".join(lines) + "\n")
    return path


def compare_steerers(lm: LoadedModel, direction_dir: str | Path, features_dir: str | Path, out_dir: str | Path,
                     config: CompareConfig = CompareConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the comparison; write ``compare.json``, ``compare.png`` and ``compare.md`` and return the JSON."""
    out = RunDir(Path(out_dir))
    direction_dir, features_dir = Path(direction_dir), Path(features_dir)
    used: set[str] = set()
    for file in (direction_dir / "prompts.json", features_dir / "prompts.json"):
        if file.is_file():
            for prompts in json.loads(file.read_text()).values():
                if isinstance(prompts, list):
                    used.update(p for p in prompts if isinstance(p, str))
    test = _test_prompts(config, used)
    steers, setup = build_steerers(lm, direction_dir, features_dir, config, out)
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    order = [n for n in config.steerers if n in steers] + [n for n in steers if n not in config.steerers]  # as asked; baseline last if unasked
    for name in order:
        steer = steers[name]
        classes = ("harmless",) if name in INDUCE else ("harmful", "harmless")
        for cls in classes:
            dataset = config.harmful if cls == "harmful" else config.harmless
            cells[(name, cls)] = _with_second_judge(out, _cell(lm, out, name, steer, cls, test[cls], config, dataset, progress), config)
            r = cells[(name, cls)]["refusal"]
            logger.info("%s on %s: refusal %.3f (n=%d)", name, cls, r["value"], r["n"])
    if "latents-per-prompt" in config.steerers and "attribution" in load_features(features_dir).method:
        cells[("latents-per-prompt", "harmful")] = _with_second_judge(out, _per_prompt_cell(lm, out, direction_dir, features_dir, test["harmful"],
                                                                                           config, progress), config)
    verdict = kapros_verdict(cells)
    rows = []
    for name in dict.fromkeys(name for name, _ in cells):
        row: dict[str, Any] = {"name": name}
        for cls in ("harmful", "harmless"):
            if (name, cls) in cells:
                r = cells[(name, cls)]["refusal"]
                row[cls] = {"value": r["value"], "lo": r["ci95"][0], "hi": r["ci95"][1], "n": r["n"]}
        kl = cells.get((name, "harmless"), {}).get("kl")
        if kl:
            row["kl"] = {"value": kl["value"], "lo": kl["ci95"][0], "hi": kl["ci95"][1]}
        rows.append(row)
    plot_steerer_comparison(rows, out.file("compare.png"), title=f"each steerer on held-out test prompts ({config.judge} judge)")
    result = {"config": asdict(config), "setup": setup, "cells": [cell for cell in cells.values()], "verdict": verdict,
              "records": [cell["refusal"] for cell in cells.values()] + [cell["kl"] for cell in cells.values() if "kl" in cell]}
    write_json(out.file("compare.json"), result)
    _report(out, cells, verdict, setup, config)
    return result


__all__ = ["BYPASS", "INDUCE", "CompareConfig", "build_steerers", "compare_steerers", "kapros_verdict"]
