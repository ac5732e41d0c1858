"""Execute a :class:`~refusal_steer.runs.config.RunConfig`: each stage resumable, every result a :class:`ResultRecord`.

Stages run in order: the direction (``RUN/direction``), each SAE (``RUN/sae/NAME``), then the evaluation
matrix. A cell of the matrix is stamped with the steer's fingerprint, the model hash, the prompts' source
and the settings that change its numbers, so a rerun skips finished cells and recomputes only what
changed. The datasets one steer is evaluated on for refusal are generated together in one batch (on a CPU a
decoding step costs little more for 200 rows than for 100). Evaluation prompts are checked against the
prompts the direction was fitted on. ``metrics.json`` collects every result; ``report: demo`` writes the
demo's report from it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data import load_dataset
from ..errors import ConfigError
from ..evaluation import evaluate_gsm8k, evaluate_kl, evaluate_multiple_choice, evaluate_refusal, stratified_subset
from ..hooks import Intervention
from ..interventions import fingerprint, parse_steer
from ..models import LoadedModel, load_model
from ..report.demo_report import write_demo_report
from .config import EvaluateConfig, RunConfig, to_mapping
from .direction import DirectionResult, find_direction
from .rundir import RunDir, write_json
from .sae_stage import train_sae_stage

logger = logging.getLogger(__name__)

Announce = Callable[[str], None]


def plan(config: RunConfig) -> list[str]:
    """The stages ``config`` declares, by name, in the order they run (what is announced before starting)."""
    names = []
    if config.direction is not None:
        names.append("direction: find, select and refine the refusal direction")
    names += [f"sae {stage.folder}: train ({stage.arch}, {stage.width} latents, {stage.train.tokens:,} tokens)" for stage in config.sae]
    if config.evaluate is not None:
        ev = config.evaluate
        for spec in ev.metrics:
            steers = spec.steers or tuple(ev.steers)
            for steer in steers:
                if spec.metric == "kl" and ev.steers[steer].steer.strip() in ("", "none", "baseline"):
                    continue
                names.append(f"{spec.metric} under {steer} on {'+'.join(spec.datasets)}")
    if config.report:
        names.append("report")
    return names


def execute_run(config: RunConfig, out_dir: str | Path, *, progress: bool = True, announce: Announce | None = None,
                lm: LoadedModel | None = None) -> Path:
    """Run (or resume) every stage of ``config`` in ``out_dir``; return the path of ``metrics.json`` (or the report's)."""
    started = time.time()
    say = announce or (lambda text: logger.info("%s", text))
    run = RunDir(Path(out_dir))
    stages = plan(config)
    say(f"{len(stages)} stages: " + "; ".join(f"{i}. {name}" for i, name in enumerate(stages, 1)))
    counter = iter(range(1, len(stages) + 1))

    def begin(name: str) -> None:
        say(f"stage {next(counter)}/{len(stages)}: {name}")

    lm = lm or load_model(config.model)
    direction: DirectionResult | None = None
    if config.direction is not None:
        begin(stages[0])
        direction = find_direction(lm, config.direction, run.file("direction"), progress=progress)
    for stage in config.sae:
        begin(f"sae {stage.folder}")
        train_sae_stage(lm, stage, run.file(f"sae/{stage.folder}"), progress=progress)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    if config.evaluate is not None:
        results, skipped = _evaluate(run, lm, config, direction, begin, progress)
    metrics = _metrics(lm, config, direction, results, skipped, started)
    write_json(run.file("metrics.json"), metrics)
    run.write_manifest(stage="run", model=lm.spec, model_sha256=lm.source_sha256, config=to_mapping(config), seed=config.seed)
    if config.report == "demo":
        begin("report")
        return write_demo_report(run.path, metrics)
    return run.file("metrics.json")


def _resolve_steers(run: RunDir, lm: LoadedModel, ev: EvaluateConfig) -> tuple[dict[str, list[Intervention]], dict[str, str]]:
    steers: dict[str, list[Intervention]] = {}
    skipped: dict[str, str] = {}
    for name, entry in ev.steers.items():
        text = entry.steer.replace("{run}", str(run.path))
        try:
            steers[name] = parse_steer(text, lm)
        except ConfigError as exc:
            if entry.optional and ("no saved" in exc.message or "does not exist" in exc.message or "no capped" in exc.message):
                skipped[name] = exc.message
                logger.info("steer %s skipped: %s", name, exc.message)
                continue
            raise ConfigError(f"evaluate.steers.{name}: {exc.message}", fix=exc.fix) from exc
    return steers, skipped


def _prompts(entry: Any, seed: int) -> list[Any]:
    records = list(load_dataset(entry.name, split=entry.split, limit=entry.limit, seed=seed))
    if not records:
        raise ConfigError(f"dataset {entry.name!r} split {entry.split!r} is empty", fix="use another split or dataset")
    return [r.prompt if isinstance(getattr(r, "prompt", None), str) else r for r in records]


def _check_overlap(run: RunDir, prompts: Sequence[Any]) -> None:
    fitted_file = run.file("direction/prompts.json")
    if not fitted_file.is_file():
        return
    fitted = {p for ps in json.loads(fitted_file.read_text()).values() for p in ps}
    overlap = {p for p in prompts if isinstance(p, str)} & fitted
    if overlap:  # splits are content-hashed, so this cannot happen with the pinned data; checked anyway
        raise ConfigError(f"{len(overlap)} evaluation prompts were used to fit the direction",
                          fix="evaluate on the test split, or on a dataset the direction was not fitted on")


def _evaluate(run: RunDir, lm: LoadedModel, config: RunConfig, direction: DirectionResult | None, begin: Callable[[str], None],
              progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
    ev = config.evaluate
    assert ev is not None
    steers, skipped = _resolve_steers(run, lm, ev)
    prompts = {name: _prompts(entry, config.seed) for name, entry in ev.datasets.items()
               if any(name in spec.datasets for spec in ev.metrics if spec.metric in ("refusal", "kl"))}
    if direction is not None:
        _check_overlap(run, [p for ps in prompts.values() for p in ps])
    base_key = {"model_sha256": lm.source_sha256, "model": lm.spec, "seed": config.seed}
    results: dict[str, Any] = {}
    for spec in ev.metrics:
        for steer_name in spec.steers or tuple(ev.steers):
            if steer_name in skipped:  # an optional steer whose file does not exist (recorded in metrics.json)
                if spec.metric != "kl" or steer_name in (spec.steers or ()):
                    begin(f"{spec.metric} under {steer_name}: skipped ({skipped[steer_name]})")
                continue
            interventions = steers[steer_name]
            if spec.metric == "kl" and not interventions:
                continue
            begin(f"{spec.metric} under {steer_name} on {'+'.join(spec.datasets)}")
            if spec.metric == "refusal":
                results.update(_refusal_cell(run, lm, ev, steer_name, interventions, spec.datasets, prompts, base_key, progress))
            elif spec.metric == "kl":
                for dataset in spec.datasets:
                    results[f"kl_{steer_name}_{dataset}"] = _kl_cell(run, lm, ev, steer_name, interventions, dataset, prompts[dataset], base_key)
            else:
                for dataset in spec.datasets:
                    results[f"{spec.metric}_{steer_name}_{dataset}"] = _capability_cell(run, lm, ev, spec.metric, steer_name, interventions,
                                                                                       dataset, config.seed, base_key, progress)
    return results, skipped


def _refusal_cell(run: RunDir, lm: LoadedModel, ev: EvaluateConfig, steer_name: str, interventions: list[Intervention],
                  datasets: Sequence[str], prompts: dict[str, list[Any]], base_key: dict, progress: bool) -> dict[str, Any]:
    """Refusal rate under one steer on each dataset, generated together; one stamped stage per dataset."""
    settings = {"judge": ev.judge, "max_new_tokens": ev.max_new_tokens, "generation_batch_size": ev.generation_batch_size}
    steer = fingerprint(interventions)  # hashes every tensor (an SAE's weights too): once per cell, not per dataset
    keys = {d: {**base_key, **settings, "steer": steer, "dataset": asdict(ev.datasets[d]), "metric": "refusal"} for d in datasets}
    names = {d: f"{steer_name}_{d}" for d in datasets}
    pending = [d for d in datasets if not run.is_done(names[d], keys[d], [f"completions/{names[d]}.jsonl", f"results/{names[d]}.json"])]
    if pending:
        t0 = time.time()
        together = [p for d in pending for p in prompts[d]]
        result = evaluate_refusal(lm, together, interventions, judge=ev.judge, max_new_tokens=ev.max_new_tokens,
                                  batch_size=ev.generation_batch_size, progress=progress)
        seconds = time.time() - t0
        offset = 0
        for d in pending:
            size = len(prompts[d])
            part = result.subset(offset, offset + size, dataset=ev.datasets[d].name, split=ev.datasets[d].split)
            offset += size
            path = run.file(f"completions/{names[d]}.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in part.records()))
            write_json(run.file(f"results/{names[d]}.json"), {
                "condition": steer_name, "dataset": d, "source": ev.datasets[d].name,
                "split": ev.datasets[d].split, "refusal_rate": part.rate.value, "ci95": list(part.ci95), "n": part.n, "k": part.rate.k,
                "ci_method": part.rate.method, "judge": f"{part.judge}@{part.judge_version}",
                "degenerate_rate": part.degenerate_rate.value, "degenerate_ci95": list(part.degenerate_rate.ci95),
                "degenerate_k": part.degenerate_rate.k, "completions": f"completions/{names[d]}.jsonl",
                "seconds": round(seconds * size / len(together), 1), "generated_with": [names[x] for x in pending],
                "record": part.record.to_dict() if part.record else None,
            })
            run.mark_done(names[d], keys[d], seconds * size / len(together))
    return {names[d]: json.loads(run.file(f"results/{names[d]}.json").read_text()) for d in datasets}


def _kl_cell(run: RunDir, lm: LoadedModel, ev: EvaluateConfig, steer_name: str, interventions: list[Intervention], dataset: str,
             prompts: list[Any], base_key: dict) -> dict[str, Any]:
    name = f"kl_{steer_name}_{dataset}"
    key = {**base_key, "steer": fingerprint(interventions), "dataset": asdict(ev.datasets[dataset]), "metric": "kl", "batch_size": ev.batch_size}
    path = f"results/{name}.json"
    if not run.is_done(name, key, [path]):
        t0 = time.time()
        kl = evaluate_kl(lm, prompts, interventions, batch_size=ev.batch_size, dataset=ev.datasets[dataset].name,
                         split=ev.datasets[dataset].split)
        write_json(run.file(path), {
            "kl": kl.mean.value, "ci95": [kl.mean.lo, kl.mean.hi], "n": kl.mean.n, "ci_method": kl.mean.method,
            "dataset": ev.datasets[dataset].name, "split": ev.datasets[dataset].split, "record": kl.record.to_dict() if kl.record else None,
        })
        run.mark_done(name, key, time.time() - t0)
    return json.loads(run.file(path).read_text())


def _capability_cell(run: RunDir, lm: LoadedModel, ev: EvaluateConfig, metric: str, steer_name: str, interventions: list[Intervention],
                     dataset: str, seed: int, base_key: dict, progress: bool) -> dict[str, Any]:
    entry = ev.datasets[dataset]
    name = f"{metric}_{steer_name}_{dataset}"
    key = {**base_key, "steer": fingerprint(interventions), "dataset": asdict(entry), "metric": metric, "batch_size": ev.batch_size,
           "max_new_tokens": ev.max_new_tokens}
    path = f"results/{name}.json"
    if not run.is_done(name, key, [path]):
        t0 = time.time()
        split = None if entry.split == "all" else entry.split
        if metric in ("mmlu", "arc"):
            records = stratified_subset(list(load_dataset(entry.name, split=split, seed=seed)), entry.limit, seed=seed)
            res = evaluate_multiple_choice(lm, records, interventions, batch_size=ev.batch_size, seed=seed, progress=progress,
                                           dataset=entry.name, split=entry.split)
        else:
            records = list(load_dataset(entry.name, split=split, limit=entry.limit, seed=seed))
            res = evaluate_gsm8k(lm, records, interventions, max_new_tokens=ev.max_new_tokens, batch_size=ev.generation_batch_size,
                                 seed=seed, progress=progress, dataset=entry.name, split=entry.split)
        record = res.record.to_dict() if res.record else None
        write_json(run.file(path), {"accuracy": res.accuracy.value, "ci95": list(res.accuracy.ci95), "n": res.accuracy.n,
                                    "k": res.accuracy.k, "ci_method": res.accuracy.method, "record": record})
        run.mark_done(name, key, time.time() - t0)
    return json.loads(run.file(path).read_text())


def _metrics(lm: LoadedModel, config: RunConfig, direction: DirectionResult | None, results: dict[str, Any],
             skipped: dict[str, str], started: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {"model": lm.spec, "model_sha256": lm.source_sha256, "config": dict(config.label) or to_mapping(config),
                               "results": results, "skipped_steers": skipped,
                               "seconds_this_invocation": round(time.time() - started, 1)}
    if direction is not None:
        selection = direction.selection
        metrics["direction"] = {k: selection.get(k) for k in ("point", "position", "chosen", "baseline_refusal_score_harmful",
                                                              "baseline_refusal_score_harmless", "screen_rank_correlation",
                                                              "rule", "actadd_coef", "actadd_calibration", "actadd",
                                                              "actadd_search", "cap", "config")}
        metrics["optimization"] = optimization_summary(selection.get("optimization"))
        metrics["refusal_tokens"] = direction.refusal_tokens.get("tokens")
    return metrics


def optimization_summary(optimization: dict | None) -> dict | None:
    """What identifies the refined direction (its kept checkpoint and settings), for metrics.json; None when skipped."""
    if not optimization or optimization.get("skipped"):
        return None
    kept = next(c for c in optimization["checkpoints"] if c["step"] == optimization["step"])
    return {"step": optimization["step"], "kept": kept, "n_targets": optimization["n_targets"], "target": optimization["target"],
            "config": optimization["config"]}


__all__ = ["execute_run", "optimization_summary", "plan"]
