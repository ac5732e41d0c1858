"""``refusal-steer demo``: the top-down refusal pipeline end to end on the default model.

1. find and select the refusal direction on train/val splits (:mod:`refusal_steer.directions`);
2. generate on held-out *test* prompts (harmful and harmless) under each condition: baseline,
   directional ablation at every layer (the difference-in-means direction, as Arditi et al.), ablation of
   the direction refined by gradient descent (:mod:`refusal_steer.directions.optimize`), activation
   addition at the direction's layer, and optionally capped ablation (the projection lowered to the harmless
   level; :mod:`refusal_steer.directions.cap`);
3. judge refusals, measure harmless KL under every ablation, and write ``metrics.json``, completions,
   plots and a readable ``report.md`` with side-by-side examples.

Every stage is stamped, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data import load_dataset
from .directions.cap import CAP_FILENAME, cap_summary, load_cap
from .directions.io import OPTIMIZED_FILENAME, actadd_intervention, load_direction
from .directions.optimize import OptimizeConfig
from .runs.direction import DirectionConfig, DirectionResult, find_direction
from .directions.selection import SelectionConfig
from .evaluation.kl import evaluate_kl
from .evaluation.refusal import evaluate_refusal
from .hooks import Intervention
from .interventions import all_layers_ablation, fingerprint
from .models import LoadedModel, load_model
from .report.demo_report import write_demo_report
from .runs import RunDir, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``quick()`` gives the smaller preset."""

    model: str = "default"
    harmful: str = "advbench"
    harmless: str = "harmless"
    n_train: int = 128
    n_val: int = 32
    n_kl: int = 32
    """Harmless validation prompts the selection's KL filter is measured on. The demo keeps Arditi et al.'s
    32 (the ``n_val`` prompts) to stay inside its time budget: 128, the ``direction`` default, costs about
    4 more minutes of selection on 2 cores (docs/results.md has what it changes)."""
    n_eval: int = 100
    """Held-out test prompts per class for each condition."""
    max_new_tokens: int = 24
    """Tokens generated per answer. On session 8's 800 demo completions the substring judge gives the same verdict on the
    first 24 tokens as on the first 32 for 799 (docs/results.md); decoding is most of the demo's time."""
    batch_size: int = 32
    """Prompts per scoring forward pass (selection, KL)."""
    generation_batch_size: int = 128
    """Prompts generated together: on a CPU a decoding step costs about as much for 16 rows as for 64,
    so one large batch is several times faster (halved automatically on out-of-memory)."""
    seed: int = 0
    judge: str = "substring"
    screen_top_k: int = 16
    n_token_probe: int = 32
    """Prompts per class whose greedy completions reveal the refusal tokens."""
    actadd_coef: float | None = None
    """Activation-addition coefficient; None uses the one calibrated during selection."""
    actadd_candidates: int = 4
    """Alternatives calibrated for activation addition when the selected direction cannot induce refusal
    (see :func:`refusal_steer.directions.selection.choose_actadd`); 0 adds the selected direction."""
    actadd_positions: str = "prompt"
    """Where activation addition adds the direction: the prompt's tokens (default) or ``"all"`` (Arditi et al.)."""
    refusal_token_ids: tuple[int, ...] | None = None
    """Skip refusal-token discovery and use these ids."""
    cap_candidates: int = 0
    """Lowest-bypass candidates scored under capped ablation (0, the default: no capped-ablation condition; the refined
    direction removes more refusal at a lower KL and, unlike capping, bakes into weights, and both do not fit in 15 minutes)."""
    optimize_steps: int = 10
    """Gradient steps refining the selected direction (:mod:`refusal_steer.directions.optimize`); 0: no refined-ablation condition."""
    optimize_n_kl: int = 128
    """Harmless validation prompts the refinement's KL filter uses (selection keeps ``n_kl``: the refinement checks only a few
    directions, so the larger sample costs seconds there, not minutes)."""

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        # 16 new tokens: on the quick run's 192 completions the substring judge gives the same verdict
        # on the first 16 tokens as on the first 24 for 191 (docs/results.md); decoding is most of its time.
        return cls(**{"n_train": 64, "n_val": 16, "n_kl": 16, "n_eval": 32, "max_new_tokens": 16, "screen_top_k": 8,
                      "n_token_probe": 16, "optimize_steps": 5, "optimize_n_kl": 32, **overrides})


@dataclass
class Condition:
    """One steering condition evaluated on a prompt set."""

    name: str
    dataset: str
    interventions: Sequence[Intervention] = field(default_factory=tuple)


def _conditions(lm: LoadedModel, direction_dir: Path, selection: dict, config: DemoConfig) -> list[Condition]:
    ablate = [all_layers_ablation(load_direction(direction_dir).direction, lm)]
    actadd = [actadd_intervention(direction_dir, config.actadd_coef)]  # selection may add another candidate than it ablates
    steered = [("ablation", ablate), ("actadd", actadd)]
    refined = _optimization_summary(selection.get("optimization"))  # None when skipped or not asked for
    if refined and refined["step"] != 0:  # step 0 kept: the refined direction is the selected one, already evaluated
        steered.insert(1, ("optimized", [all_layers_ablation(load_direction(direction_dir / OPTIMIZED_FILENAME).direction, lm)]))
    if (direction_dir / CAP_FILENAME).is_file():  # written when a candidate passed the KL filter under capping
        steered.insert(1, ("cap", [load_cap(direction_dir).intervention()]))
    return [Condition(name, dataset, interventions) for dataset in ("harmful", "harmless")
            for name, interventions in [("baseline", ()), *steered]]


def _optimization_summary(optimization: dict | None) -> dict | None:
    """What identifies the refined direction (its kept checkpoint and settings), for stage keys and metrics.json."""
    if not optimization or optimization.get("skipped"):
        return None
    kept = next(c for c in optimization["checkpoints"] if c["step"] == optimization["step"])
    return {"step": optimization["step"], "kept": kept, "n_targets": optimization["n_targets"], "target": optimization["target"],
            "config": optimization["config"]}


def _kl_stage(run: RunDir, lm: LoadedModel, stage: str, key: dict, name: str, interventions: Sequence[Intervention],
              prompts: Sequence[str], config: DemoConfig) -> dict:
    """Harmless KL under one condition's interventions, as a resumable stage writing ``results/kl_{name}_harmless.json``."""
    path = f"results/kl_{name}_harmless.json"
    if not run.is_done(stage, key, [path]):
        kl = evaluate_kl(lm, prompts, interventions, batch_size=config.batch_size, dataset=config.harmless, split="test")
        write_json(run.file(path), {
            "kl": kl.mean.value, "ci95": [kl.mean.lo, kl.mean.hi], "n": kl.mean.n, "ci_method": kl.mean.method,
            "dataset": config.harmless, "split": "test", "record": kl.record.to_dict() if kl.record else None,
        })
        run.mark_done(stage, key)
    return json.loads(run.file(path).read_text())


def run_demo(out_dir: str | Path = "runs/demo", config: DemoConfig = DemoConfig(), *, progress: bool = True) -> Path:
    """Run (or resume) the demo; return the path of ``report.md``."""
    started = time.time()
    run = RunDir(Path(out_dir))
    lm = load_model(config.model)
    direction_config = DirectionConfig(
        harmful=config.harmful, harmless=config.harmless, n_train=config.n_train, n_val=config.n_val, n_kl=config.n_kl, seed=config.seed,
        batch_size=config.batch_size, generation_batch_size=config.generation_batch_size, judge=config.judge,
        refusal_token_ids=config.refusal_token_ids, n_token_probe=config.n_token_probe,
        selection=SelectionConfig(screen_top_k=config.screen_top_k, batch_size=config.batch_size,
                                  actadd_candidates=config.actadd_candidates, actadd_positions=config.actadd_positions,
                                  cap_candidates=config.cap_candidates),
        optimize=OptimizeConfig(steps=config.optimize_steps, n_kl=config.optimize_n_kl),
    )
    direction: DirectionResult = find_direction(lm, direction_config, run.file("direction"), progress=progress)

    prompts = {
        "harmful": [r.prompt for r in load_dataset(config.harmful, split="test", limit=config.n_eval, seed=config.seed)],
        "harmless": [r.prompt for r in load_dataset(config.harmless, split="test", limit=config.n_eval, seed=config.seed)],
    }
    fitted = json.loads(run.file("direction/prompts.json").read_text())
    overlap = set(prompts["harmful"] + prompts["harmless"]) & {p for ps in fitted.values() for p in ps}
    if overlap:  # splits are content-hashed, so this cannot happen; checked anyway and reported.
        raise RuntimeError(f"{len(overlap)} evaluation prompts were used to fit the direction")

    results: dict[str, Any] = {}
    base_key = {"config": asdict(config), "model_sha256": lm.source_sha256, "direction": direction.selection["point"],
                "position": direction.selection["position"]}
    conditions = _conditions(lm, run.file("direction"), direction.selection, config)
    optimized_key = _optimization_summary(direction.selection.get("optimization"))
    pending = []
    for condition in conditions:
        name = f"{condition.name}_{condition.dataset}"
        # A stage is keyed by what it computes: the steer's fingerprint (tensors, points, positions, coefficients)
        # and the prompt set, not by the condition's name.
        key = {**base_key, "steer": fingerprint(condition.interventions), "dataset": condition.dataset}
        if not run.is_done(name, key, [f"completions/{name}.jsonl", f"results/{name}.json"]):
            pending.append((condition, name, key))
    # Harmful and harmless prompts under the same interventions are generated in one batch: on a CPU a
    # decoding step costs little more for 64 rows than for 32, so this halves the decoding steps of --quick.
    for condition_name in dict.fromkeys(c.name for c, _, _ in pending):
        group = [item for item in pending if item[0].name == condition_name]
        t0 = time.time()
        together = [p for condition, _, _ in group for p in prompts[condition.dataset]]
        result = evaluate_refusal(lm, together, group[0][0].interventions, judge=config.judge, max_new_tokens=config.max_new_tokens,
                                  batch_size=config.generation_batch_size, progress=progress)
        seconds = time.time() - t0
        offset = 0
        for condition, name, key in group:
            size = len(prompts[condition.dataset])
            part = result.subset(offset, offset + size, dataset=getattr(config, condition.dataset), split="test")
            offset += size
            path = run.file(f"completions/{name}.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in part.records()))
            write_json(run.file(f"results/{name}.json"), {
                "condition": condition.name, "dataset": condition.dataset, "source": getattr(config, condition.dataset),
                "split": "test", "refusal_rate": part.rate.value, "ci95": list(part.ci95), "n": part.n, "k": part.rate.k,
                "ci_method": part.rate.method, "judge": f"{part.judge}@{part.judge_version}",
                "degenerate_rate": part.degenerate_rate.value, "degenerate_ci95": list(part.degenerate_rate.ci95),
                "degenerate_k": part.degenerate_rate.k, "completions": f"completions/{name}.jsonl",
                "seconds": round(seconds * size / len(together), 1), "generated_with": [n for _, n, _ in group],
                "record": part.record.to_dict() if part.record else None,
            })
            run.mark_done(name, key, seconds * size / len(together))
    for condition in conditions:
        name = f"{condition.name}_{condition.dataset}"
        results[name] = json.loads(run.file(f"results/{name}.json").read_text())

    steered = {c.name: c.interventions for c in conditions if c.dataset == "harmless"}
    for name in ("ablation", "cap", "optimized"):  # KL under every ablation-like steer the demo evaluates
        if name in steered:
            key = {**base_key, "stage": "kl", "steer": fingerprint(steered[name])}
            results[f"kl_{name}_harmless"] = _kl_stage(run, lm, f"kl_{name}", key, name, steered[name], prompts["harmless"], config)

    metrics = {
        "model": lm.spec,
        "model_sha256": lm.source_sha256,
        "direction": {k: direction.selection.get(k) for k in ("point", "position", "chosen", "baseline_refusal_score_harmful",
                                                              "baseline_refusal_score_harmless", "screen_rank_correlation",
                                                              "rule", "actadd_coef", "actadd_calibration", "actadd",
                                                              "actadd_search", "cap", "config")},
        "optimization": optimized_key,
        "refusal_tokens": direction.refusal_tokens.get("tokens"),
        "config": asdict(config),
        "results": results,
        "seconds_this_invocation": round(time.time() - started, 1),
    }
    write_json(run.file("metrics.json"), metrics)
    run.write_manifest(stage="demo", model=lm.spec, model_sha256=lm.source_sha256, config=asdict(config))
    return write_demo_report(run.path, metrics)
