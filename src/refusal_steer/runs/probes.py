"""``probe``: dense vs SAE-latent refusal probes, in and out of distribution, and why jailbreaks work (Yeo et al. 2025, §5).

Probes (:mod:`refusal_steer.probes`) are logistic regressions trained on plain harmful (1) vs harmless (0) *train*
prompts, on three inputs:

- ``dense``: ``resid_pre.L`` at the last prompt token, one probe per layer;
- ``latents``: the features folder's refusal latents (its ``selected`` set, top ``k``), each reduced per prompt
  (default: the max over the tokens after the chat template's prefix, the reduction they were selected by);
- ``random_latents``: the control, as many random latents from the same SAEs (seeded).

Each is evaluated in distribution on the *test* prompts of the same datasets, and out of distribution (OOD) on the
jailbreak-wrapped prompts of attack transcripts (``refusal-steer attack``), each labelled by whether the model
refused it: the judged verdict on the model's own last answer. Accuracy carries a Wilson 95% interval, AUROC a
percentile bootstrap over prompts (resampled within class); every figure states n and the judge.

The mechanism (Yeo et al.: a relative drop of 0.73 on successful jailbreaks vs 0.18 on failed ones): per
transcript, the summed activation of the refusal latents on the wrapped prompt vs on the plain goal, relative
drop = 1 - wrapped / plain, averaged with bootstrap 95% intervals over successful (not refused) and failed
(refused) jailbreaks, and their difference.

This lives in the run layer because labelling transcripts may need the judges of :mod:`refusal_steer.evaluation`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..data import load_prompts
from ..errors import ConfigError
from ..evaluation.attacks.base import Transcript
from ..evaluation.attacks.replay import read_transcripts
from ..evaluation.judges import get_judge
from ..evaluation.refusal import judge_completions
from ..evaluation.stats import Rate, auroc_with_ci, mean_difference_with_ci, mean_with_ci, rate_from_bools
from ..features.featureset import LatentRef, load_feature_saes, load_features
from ..interventions import fingerprint
from ..models.loaded import LoadedModel
from ..probes import DEFAULT_L2, fit_probe, latent_features, random_latents, relative_drop, residual_features
from .rundir import RunDir, stable_hash, write_json

logger = logging.getLogger(__name__)

PROBES_FILE = "probes.json"
MECHANISM_FILE = "mechanism.json"
PLOT_FILE = "probes_ood_accuracy.png"
REDUCES = ("max", "last")


@dataclass(frozen=True)
class ProbesConfig:
    """What ``probe`` runs (recorded in ``probes.json``)."""

    harmful: str = "advbench"
    """Harmful prompts: the train split trains the probes, the test split is the in-distribution check."""
    harmless: str = "harmless"
    n_train: int = 128
    """Train prompts per class."""
    n_test: int = 64
    """In-distribution test prompts per class."""
    layers: tuple[int, ...] | None = None
    """Layers of the dense probes (None: every layer)."""
    k: int | None = None
    """Refusal latents: the top k of the features' set (None: the whole set)."""
    latent_set: str = "selected"
    reduce: str = "max"
    """Per-prompt latent value: ``max`` over the tokens after the template prefix, or the ``last`` prompt token."""
    l2: float = DEFAULT_L2
    judge: str | None = None
    """None: the verdicts recorded in the transcripts; a judge spec re-judges the recorded answers."""
    allow_one_class: bool = False
    """Report accuracy only when every OOD prompt has the same label (AUROC and the mechanism's difference are then undefined)."""
    seed: int = 0
    batch_size: int = 8
    n_resamples: int = 10_000
    system: str | None = None

    def __post_init__(self) -> None:
        if self.reduce not in REDUCES:
            raise ConfigError(f"reduce={self.reduce!r} is unknown", fix="use max or last")
        if self.n_train < 2 or self.n_test < 1:
            raise ConfigError(f"n_train={self.n_train} and n_test={self.n_test}: need n_train >= 2 and n_test >= 1")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"k={self.k} must be >= 1")
        if self.l2 <= 0:
            raise ConfigError(f"l2={self.l2} must be > 0")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))


def results_path(transcripts_file: Path) -> Path:
    """``runs/x.transcripts.jsonl`` -> ``runs/x.json``, the results ``refusal-steer attack`` wrote beside it."""
    name = transcripts_file.name
    stem = name[: -len(".transcripts.jsonl")] if name.endswith(".transcripts.jsonl") else transcripts_file.stem
    return transcripts_file.with_name(f"{stem}.json")


def check_same_model(lm: LoadedModel, transcripts_file: Path, transcripts: list[Transcript]) -> dict[str, Any]:
    """Refuse transcripts of another model or of a steered one; return what was checked.

    The model is read from the results JSON ``refusal-steer attack`` wrote beside the transcripts (by weights sha256
    when both are known, else by model spec). Labels must be the unsteered model's own refusals, since the probes
    read the unsteered model's activations.
    """
    unsteered = fingerprint([])
    steered = sorted({t.steer for t in transcripts if t.steer and t.steer != unsteered})
    if steered:
        raise ConfigError(f"{transcripts_file} holds attacks on a steered model (steer {', '.join(steered)}): its refusals are not the model's own",
                          fix="run 'refusal-steer attack' without --steer (or replay the transcripts unsteered) and probe those")
    info: dict[str, Any] = {"results_file": None, "model": None, "model_sha256": None, "checked": "none (no results JSON beside the transcripts)"}
    results = results_path(transcripts_file)
    if not results.is_file():
        logger.warning("no %s beside %s: cannot check the transcripts are of this model", results.name, transcripts_file)
        return info
    try:
        data = json.loads(results.read_text())
    except ValueError:
        return {**info, "checked": f"none ({results} is not JSON)"}
    model, sha = data.get("model"), data.get("model_sha256")
    info.update(results_file=str(results), model=model, model_sha256=sha)
    if sha and lm.source_sha256:
        if sha != lm.source_sha256:
            raise ConfigError(f"{transcripts_file} holds attacks on another model ({model}, weights sha256 {sha[:12]}...) than {lm.spec} "
                              f"({lm.source_sha256[:12]}...)", fix=f"pass --model {model} or transcripts of an attack on this model")
        info["checked"] = "weights sha256"
    elif model:
        if str(model) != str(lm.spec):
            raise ConfigError(f"{transcripts_file} holds attacks on another model ({model}) than {lm.spec}",
                              fix=f"pass --model {model} or transcripts of an attack on this model")
        info["checked"] = "model spec"
    return info


def _labels(transcripts: list[Transcript], judge: str | None) -> tuple[list[bool], str, str]:
    """Whether the model refused each transcript's last answer, the judge, and where the verdicts came from."""
    recorded = {t.judge for t in transcripts}
    if judge is None and "" not in recorded:
        return [t.refused[-1] for t in transcripts], ", ".join(sorted(recorded)), "recorded in the transcripts"
    judge_obj = get_judge(judge or "substring")
    prompts = [t.messages[: t.generated[-1]] for t in transcripts]
    answers = [t.messages[t.generated[-1]]["content"] for t in transcripts]
    verdicts = judge_completions(judge_obj, prompts, answers, conversation=True)
    why = "re-judged" if judge else "judged (the transcripts name no judge)"
    return [bool(v) for v in verdicts], f"{judge_obj.name}@{judge_obj.version}", why


def _rate(rate: Rate | None) -> dict[str, Any] | None:
    if rate is None:
        return None
    return {"value": rate.value, "lo": rate.lo, "hi": rate.hi, "n": rate.n, "k": rate.k, "method": rate.method}


def _evaluate(probe, x: torch.Tensor, y: torch.Tensor, config: ProbesConfig) -> dict[str, Any]:
    correct = (probe.predict(x) == y.bool()).numpy()
    out: dict[str, Any] = {"n": int(y.numel()), "n_positive": int(y.sum()), "accuracy": _rate(rate_from_bools(correct))}
    if 0 < int(y.sum()) < y.numel():
        out["auroc"] = _rate(auroc_with_ci(probe.logits(x).numpy(), y.numpy(), n_resamples=config.n_resamples, seed=config.seed))
    else:
        out["auroc"] = None
        out["auroc_undefined"] = f"all {y.numel()} prompts have the same label: AUROC needs both classes"
    return out


def _mechanism(plain: torch.Tensor, wrapped: torch.Tensor, refused: list[bool], judge: str, config: ProbesConfig,
               latents: list[LatentRef], goals: list[str]) -> dict[str, Any]:
    drop = relative_drop(wrapped.sum(1), plain.sum(1))
    refused_t = torch.tensor(refused, dtype=torch.bool)
    defined = ~torch.isnan(drop)
    success = drop[defined & ~refused_t].numpy()
    failed = drop[defined & refused_t].numpy()
    kw = dict(n_resamples=config.n_resamples, seed=config.seed)
    groups = {"successful": _rate(mean_with_ci(success, **kw)) if success.size else None,
              "failed": _rate(mean_with_ci(failed, **kw)) if failed.size else None}
    difference = mean_difference_with_ci(success, failed, **kw)
    return {
        "measure": "relative drop = 1 - (summed activation of the refusal latents on the wrapped prompt) / (the same on the plain goal)",
        "reduce": config.reduce, "judge": judge, "n_latents": len(latents),
        "successful_jailbreaks": groups["successful"], "failed_jailbreaks": groups["failed"],
        "difference_successful_minus_failed": _rate(difference) if success.size and failed.size else None,
        "n_successful": int(success.size), "n_failed": int(failed.size),
        "n_undefined": int((~defined).sum()),
        "undefined_note": "goals whose plain prompt has no refusal-latent activation (plain sum <= 0) have no relative drop and are left out",
        "reference": "Yeo et al. 2025, section 5: 0.73 on successful vs 0.18 on failed jailbreaks (Gemma-2-2B)",
        "per_transcript": [{"goal": g, "refused": r, "plain": float(p), "wrapped": float(w), "relative_drop": None if math.isnan(d) else float(d)}
                           for g, r, p, w, d in zip(goals, refused, plain.sum(1).tolist(), wrapped.sum(1).tolist(), drop.tolist())],
    }


def run_probes(lm: LoadedModel, features_dir: str | Path, transcripts_file: str | Path, out_dir: str | Path,
               config: ProbesConfig = ProbesConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate the dense, latent and random-latent probes, and measure the mechanism.

    Writes ``OUT/probes.json`` (per probe kind and layer: train n, in-distribution and OOD accuracy and AUROC with
    95% intervals, the judge), ``OUT/mechanism.json``, ``OUT/probes_ood_accuracy.png`` and ``OUT/manifest.json``;
    the activations are cached in ``OUT/residuals.safetensors`` and ``OUT/latents.safetensors`` (each reused while its inputs are unchanged: another ``reduce`` redoes only the latents).

    Raises:
        ConfigError: a missing features folder or transcripts file, an empty latent set or prompt set, transcripts
            of another (or a steered) model, or OOD labels of one class without ``allow_one_class``.
    """
    started = time.time()
    features_dir, transcripts_file = Path(features_dir), Path(transcripts_file)
    features = load_features(features_dir)
    latents = features.ranked(config.latent_set, config.k)
    if not latents:
        raise ConfigError(f"the {config.latent_set!r} set of {features_dir} is empty", fix="re-run 'refusal-steer features find' or pick another set")
    if features.model and features.model != lm.spec:
        logger.warning("%s was found on model %r, probing %r", features_dir, features.model, lm.spec)
    transcripts = read_transcripts(transcripts_file)
    model_check = check_same_model(lm, transcripts_file, transcripts)
    answered = [t for t in transcripts if t.generated]
    train_harmful = load_prompts(config.harmful, split="train", limit=config.n_train, seed=config.seed)
    train_harmless = load_prompts(config.harmless, split="train", limit=config.n_train, seed=config.seed)
    test_harmful = load_prompts(config.harmful, split="test", limit=config.n_test, seed=config.seed)
    test_harmless = load_prompts(config.harmless, split="test", limit=config.n_test, seed=config.seed)
    seen = set(train_harmful) | set(train_harmless)
    kept = [t for t in answered if t.objective not in seen]  # OOD goals never among the probes' train prompts
    for name, items in (("train harmful", train_harmful), ("train harmless", train_harmless), ("test harmful", test_harmful),
                        ("test harmless", test_harmless), ("OOD transcripts (answered, not train prompts)", kept)):
        if not items:
            raise ConfigError(f"no {name} prompts", fix="use larger datasets or other transcripts")
    refused, judge, verdict_source = _labels(kept, config.judge)
    if len(set(refused)) < 2 and not config.allow_one_class:
        which = "refused" if refused[0] else "answered"
        raise ConfigError(f"the model {which} all {len(kept)} jailbreak prompts ({judge}): OOD AUROC and the mechanism's "
                          "successful-vs-failed comparison are undefined with one class",
                          fix="attack more goals or with another family, or pass --allow-one-class to report accuracy only")
    layers = list(config.layers) if config.layers is not None else list(range(lm.n_layers))
    control = random_latents(features, latents, seed=config.seed)
    wrapped = [t.messages[: t.generated[-1]] for t in kept]
    goals = [t.objective for t in kept]
    prompt_sets = {"train": train_harmful + train_harmless, "test": test_harmful + test_harmless, "ood": wrapped, "plain": goals}

    out = RunDir(Path(out_dir))
    # Two cached stages: the dense residuals do not depend on the latent reduction, so --reduce last (or another
    # latent set) redoes only the latent pass. Neither depends on the judge, l2 or the bootstrap.
    base = {"model": lm.spec, "model_sha256": lm.source_sha256, "batch_size": config.batch_size, "system": config.system,
            "prompts": stable_hash([prompt_sets, layers])}
    if not out.is_done("residuals", base, ["residuals.safetensors"]):
        t0 = time.time()
        dense: dict[str, torch.Tensor] = {}
        for key, prompts in prompt_sets.items():
            if key != "plain":
                for layer, x in residual_features(lm, prompts, layers, batch_size=config.batch_size, system=config.system, progress=progress).items():
                    dense[f"{key}/dense/{layer}"] = x
        save_file({k: v.contiguous().float() for k, v in dense.items()}, str(out.file("residuals.safetensors")))
        out.mark_done("residuals", base, time.time() - t0)
    latent_inputs = {**base, "reduce": config.reduce, "latents": [r.key() for r in latents], "control": [r.key() for r in control], "saes": features.saes}
    if not out.is_done("latents", latent_inputs, ["latents.safetensors"]):
        t0 = time.time()
        saes = load_feature_saes(features, lm, [n for n in features.saes if any(r.sae == n for r in latents + control)])
        sparse: dict[str, torch.Tensor] = {}
        for key, prompts in prompt_sets.items():
            sets = {"latents": latents, "random_latents": control}
            for kind, x in latent_features(lm, features, saes, sets, prompts, reduce=config.reduce, batch_size=config.batch_size,
                                           system=config.system, progress=progress).items():
                sparse[f"{key}/{kind}"] = x
        save_file({k: v.contiguous().float() for k, v in sparse.items()}, str(out.file("latents.safetensors")))
        out.mark_done("latents", latent_inputs, time.time() - t0)
    tensors = {**load_file(str(out.file("residuals.safetensors"))), **load_file(str(out.file("latents.safetensors")))}

    y_train = torch.tensor([True] * len(train_harmful) + [False] * len(train_harmless))
    y_test = torch.tensor([True] * len(test_harmful) + [False] * len(test_harmless))
    y_ood = torch.tensor(refused)
    inputs_by_probe = [("dense", layer, f"dense/{layer}") for layer in layers] + [("latents", None, "latents"), ("random_latents", None, "random_latents")]
    rows = []
    for kind, layer, key in inputs_by_probe:
        probe = fit_probe(tensors[f"train/{key}"], y_train, l2=config.l2)
        train_correct = (probe.predict(tensors[f"train/{key}"]) == y_train).float().mean().item()
        ind = _evaluate(probe, tensors[f"test/{key}"], y_test, config)
        ood = {**_evaluate(probe, tensors[f"ood/{key}"], y_ood, config), "judge": judge}
        rows.append({"kind": kind, "layer": layer, "point": f"resid_pre.{layer}" if layer is not None else None,
                     "n_features": int(tensors[f"train/{key}"].shape[1]), "train_n": int(y_train.numel()), "train_accuracy": train_correct,
                     "in_distribution": ind, "ood": ood, "ood_accuracy": ood["accuracy"]})
    summary = {
        "model": lm.spec, "model_sha256": lm.source_sha256, "features": str(features_dir), "transcripts": str(transcripts_file),
        "judge": judge, "verdicts": verdict_source, "model_check": model_check, "features_model": features.model,
        "attacks": sorted({t.attack for t in kept}),
        "labels": {"train/test": "1 = harmful prompt, 0 = harmless prompt",
                   "ood": "1 = the model refused the jailbreak-wrapped prompt (judged verdict on its own last answer)"},
        "inputs": {"dense": "resid_pre.L at the last prompt token, standardised with train statistics",
                   "latents": f"{config.reduce} activation per prompt " + ("over the tokens after the chat template's prefix" if config.reduce == "max"
                                                                            else "at the last prompt token") + ", standardised with train statistics",
                   "random_latents": "the same, for as many random latents of the same SAEs (seeded)"},
        "latents": [f"{r.sae}:{r.index}" for r in latents], "random_latents": [f"{r.sae}:{r.index}" for r in control],
        "n": {"train_harmful": len(train_harmful), "train_harmless": len(train_harmless), "test_harmful": len(test_harmful),
              "test_harmless": len(test_harmless), "ood": len(kept), "ood_refused": int(sum(refused)),
              "transcripts": len(transcripts), "excluded_no_answer": len(transcripts) - len(answered),
              "excluded_train_overlap": len(answered) - len(kept)},
        "ci": {"accuracy": "Wilson 95%", "auroc": f"95% percentile bootstrap over prompts, resampled within class ({config.n_resamples}, seed {config.seed})"},
        "config": asdict(config),
        "probes": [{k: v for k, v in row.items() if k != "ood_accuracy"} for row in rows],
        "seconds": round(time.time() - started, 1),
    }
    mechanism = _mechanism(tensors["plain/latents"], tensors["ood/latents"], refused, judge, config, latents, goals)
    write_json(out.file(PROBES_FILE), summary)
    write_json(out.file(MECHANISM_FILE), mechanism)
    from ..report.plots import plot_probe_accuracy

    plot_probe_accuracy(rows, out.file(PLOT_FILE), title=f"probes on {len(kept)} jailbreak prompts of {lm.spec} (label: refused, {judge})")
    out.write_manifest(model=lm.spec, model_sha256=lm.source_sha256, seed=config.seed, features=str(features_dir),
                       transcripts=str(transcripts_file))
    summary["mechanism"] = {k: v for k, v in mechanism.items() if k != "per_transcript"}
    return summary


__all__ = ["MECHANISM_FILE", "PLOT_FILE", "PROBES_FILE", "ProbesConfig", "check_same_model", "results_path", "run_probes"]
