"""The top-down pipeline: fit candidates on train splits, find refusal tokens, select on val splits, save.

Each stage writes its artifacts into the output folder and a stamp keyed by its inputs, so an
interrupted run resumes from the last finished stage (see :mod:`refusal_steer.runs`). Artifacts:

- ``prompts.json``: the exact train/val prompts used (audit: test prompts are never among them);
- ``candidates.safetensors``: difference-in-means at every layer and post-instruction position;
- ``refusal_tokens.json``: the model's own refusal tokens and the evidence for them;
- ``selection.json`` + ``selection_heatmap.png``: the full score table and the choice;
- ``direction.safetensors``: the chosen raw direction (what ``ablate:DIR`` reads when there is no refined one);
- ``actadd.safetensors``: the raw direction activation addition uses, with its calibrated coefficient
  and positions (what ``actadd:DIR`` reads): the same vector unless selection had to pick another (``selection.json["actadd"]``);
- ``cap.safetensors``: the capped-ablation direction and per-layer ceilings (what ``cap:DIR`` reads),
  written when a candidate passed the KL filter under capping (``selection.json["cap"]``);
- ``optimized.safetensors`` + ``optimization.json``: the selected direction refined by gradient descent
  (:mod:`.optimize`; what ``ablate:DIR`` reads when present), when ``optimize.steps`` > 0.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ..data import load_prompts
from ..errors import ConfigError
from ..evaluation.judges import get_judge
from ..evaluation.refusal import evaluate_refusal
from ..interventions import all_layers_ablation
from ..hooks import HookPoint, Site
from ..models import LoadedModel
from ..report.plots import plot_selection_heatmap
from .rundir import RunDir, write_json
from ..directions.cap import CAP_FILENAME, cap_ceilings, save_cap
from ..directions.diff_in_means import CANDIDATES_FILENAME, MeanDiffs, difference_in_means
from ..directions.io import ACTADD_FILENAME, DIRECTION_FILENAME, OPTIMIZED_FILENAME, save_direction
from ..directions.optimize import OptimizeConfig, optimize_direction
from ..directions.refusal_tokens import find_refusal_tokens
from ..directions.selection import SelectionConfig, select_direction

logger = logging.getLogger(__name__)



def compliance_targets(lm: LoadedModel, prompts: Sequence[str], target: Tensor, *, n_tokens: int, judge: str = "substring",
                       batch_size: int = 64, system: str | None = None, progress: bool = True) -> dict[int, list[int]]:
    """Greedy answers to ``prompts`` under ablation of ``target``, as token ids, for those neither refused nor looping.

    These are the targets :func:`refusal_steer.directions.optimize.optimize_direction` trains towards; they are
    made here, in the run layer, because producing them needs the judges of :mod:`refusal_steer.evaluation`.
    """
    result = evaluate_refusal(lm, prompts, [all_layers_ablation(target, lm)], judge=judge, max_new_tokens=n_tokens,
                              batch_size=batch_size, system=system, progress=progress)
    return {i: list(c.token_ids) for i, (c, refused, loops) in enumerate(zip(result.completions, result.refused, result.degenerate))
            if not refused and not loops and len(c.token_ids) > 0}

@dataclass(frozen=True)
class DirectionConfig:
    """What to fit the refusal direction on, and how to select it."""

    harmful: str = "advbench"
    """Dataset of harmful instructions (train split fits, val split selects)."""
    harmless: str = "harmless"
    """Dataset of harmless instructions."""
    n_train: int = 128
    """Prompts per class for difference-in-means (Arditi et al. use 128)."""
    n_val: int = 32
    """Prompts per class for selection (Arditi et al. use 32)."""
    n_kl: int = 128
    """Harmless validation prompts the KL filter is measured on (Arditi et al. use the 32 of ``n_val``; KL is a
    mean that a few prompts dominate, and on the default model 32 put the selected candidates 0.03-0.04 nats
    below their held-out KL). Values up to ``n_val`` use the ``n_val`` prompts."""
    n_token_probe: int = 32
    """Prompts per class whose greedy completions reveal the model's refusal tokens."""
    seed: int = 0
    """Seed of the deterministic splits and samples."""
    batch_size: int = 16
    """Prompts per forward pass (difference-in-means, selection)."""
    generation_batch_size: int = 64
    """Prompts per generation batch (the refusal-token probe); larger batches decode faster."""
    judge: str = "substring"
    """Judge used to find refusal tokens."""
    system: str | None = None
    """System prompt (None keeps the chat template's default)."""
    refusal_token_ids: tuple[int, ...] | None = None
    """Skip discovery and use these refusal token ids."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    """Refinement of the selected direction by gradient descent (``steps=0`` skips it)."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_kl", "n_token_probe", "batch_size", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")


@dataclass
class DirectionResult:
    """Where everything was written, plus the selection summary."""

    out_dir: Path
    selection: dict
    refusal_tokens: dict

    @property
    def direction_path(self) -> Path:
        return self.out_dir / DIRECTION_FILENAME


def find_direction(lm: LoadedModel, config: DirectionConfig, out_dir: str | Path, *, progress: bool = True) -> DirectionResult:
    """Run difference-in-means, refusal-token discovery and selection; resume finished stages.

    Example:
        >>> result = find_direction(load_model("default"), DirectionConfig(), "runs/direction")  # doctest: +SKIP
        >>> result.selection["point"]  # doctest: +SKIP
    """
    run = RunDir(Path(out_dir))
    model_key = {"model": lm.spec, "sha256": lm.source_sha256}
    data_key = {**model_key, "harmful": config.harmful, "harmless": config.harmless, "n_train": config.n_train,
                "n_val": config.n_val, "seed": config.seed}
    prompts_file = run.file("prompts.json")
    prompts_key = {**data_key, "n_kl": config.n_kl, **({"n_kl_optimize": config.optimize.n_kl} if config.optimize.steps > 0 else {})}
    if run.is_done("prompts", prompts_key, ["prompts.json"]):
        prompts = json.loads(prompts_file.read_text())
    else:
        prompts = {
            "harmful_train": load_prompts(config.harmful, split="train", limit=config.n_train, seed=config.seed),
            "harmless_train": load_prompts(config.harmless, split="train", limit=config.n_train, seed=config.seed),
            "harmful_val": load_prompts(config.harmful, split="val", limit=config.n_val, seed=config.seed),
            "harmless_val": load_prompts(config.harmless, split="val", limit=config.n_val, seed=config.seed),
        }
        if config.n_kl > config.n_val:  # a larger sample of the same validation split
            prompts["harmless_kl"] = load_prompts(config.harmless, split="val", limit=config.n_kl, seed=config.seed)
        if config.optimize.steps > 0 and config.optimize.n_kl not in (config.n_val, config.n_kl):
            prompts["harmless_kl_optimize"] = load_prompts(config.harmless, split="val", limit=config.optimize.n_kl, seed=config.seed)
        write_json(prompts_file, prompts)
        run.mark_done("prompts", prompts_key)

    candidates_key = {**data_key, "system": config.system}
    if run.is_done("candidates", candidates_key, [CANDIDATES_FILENAME]):
        diffs = MeanDiffs.load(run.file(CANDIDATES_FILENAME))
    else:
        started = time.time()
        diffs = difference_in_means(lm, prompts["harmful_train"], prompts["harmless_train"],
                                    batch_size=config.batch_size, system=config.system, progress=progress)
        diffs.save(run.file(CANDIDATES_FILENAME))
        run.mark_done("candidates", candidates_key, time.time() - started)

    tokens_key = {**candidates_key, "judge": config.judge, "n_token_probe": config.n_token_probe,
                  "explicit": config.refusal_token_ids}
    tokens_file = run.file("refusal_tokens.json")
    if run.is_done("refusal_tokens", tokens_key, ["refusal_tokens.json"]):
        refusal_tokens = json.loads(tokens_file.read_text())
    else:
        if config.refusal_token_ids:
            ids = list(config.refusal_token_ids)
            refusal_tokens = {"token_ids": ids, "tokens": [lm.tokenizer.decode([t]) for t in ids], "source": "given"}
        else:
            found = find_refusal_tokens(
                lm, prompts["harmful_train"][: config.n_token_probe], prompts["harmless_train"][: config.n_token_probe],
                judge=get_judge(config.judge), judge_name=config.judge, batch_size=config.generation_batch_size, progress=progress,
            )
            refusal_tokens = {**found.to_json(), "source": "discovered"}
        write_json(tokens_file, refusal_tokens)
        run.mark_done("refusal_tokens", tokens_key)

    provenance = dict(model=lm.spec, model_sha256=lm.source_sha256 or "", harmful=config.harmful, harmless=config.harmless,
                      n_train=config.n_train, seed=config.seed, created_by="refusal-steer direction")
    selection_key = {**tokens_key, "selection": asdict(config.selection), "tokens": refusal_tokens["token_ids"], "n_kl": config.n_kl}
    outputs = ["selection.json", "selection_heatmap.png", DIRECTION_FILENAME, ACTADD_FILENAME]
    done = run.is_done("selection", selection_key, outputs)
    if done:
        selection_json = json.loads(run.file("selection.json").read_text())
        done = (selection_json.get("cap") or {}).get("point") is None or run.file(CAP_FILENAME).is_file()
    if not done:
        started = time.time()
        selection = select_direction(lm, diffs, prompts["harmful_val"], prompts["harmless_val"], refusal_tokens["token_ids"],
                                     config.selection, harmless_kl=prompts.get("harmless_kl"), system=config.system, progress=progress)
        selection_json = selection.to_json()
        selection_json["seconds"] = round(time.time() - started, 1)
        write_json(run.file("selection.json"), selection_json)
        plot_selection_heatmap(selection_json, run.file("selection_heatmap.png"))
        save_direction(run.path, selection.direction, selection.point, position=selection.position, actadd_coef=selection.actadd_coef,
                       actadd_positions=config.selection.actadd_positions, rule=selection.rule, **provenance)
        actadd = selection_json["actadd"]
        save_direction(run.file(ACTADD_FILENAME),
                       selection.direction if selection.actadd_direction is None else selection.actadd_direction,
                       selection.actadd_point, position=actadd["position"], actadd_coef=selection.actadd_coef,
                       actadd_positions=config.selection.actadd_positions, same_as_ablation=actadd["same_as_ablation"],
                       rule=selection.rule, **provenance)
        run.file(CAP_FILENAME).unlink(missing_ok=True)  # never leave one from an earlier selection
        if selection.cap is not None and selection.cap.layer is not None:
            capped = diffs.candidate(selection.cap.position, selection.cap.layer)
            save_cap(run.path, capped, cap_ceilings(diffs, capped), HookPoint(Site.RESID_PRE, selection.cap.layer),
                       position=selection.cap.position, rule=selection.rule, **provenance)
        run.mark_done("selection", selection_key, time.time() - started)
        selection_json = json.loads(run.file("selection.json").read_text())  # same value a resumed run returns
    if config.optimize.steps > 0:
        selection_json["optimization"] = _optimize_stage(run, lm, config, diffs, prompts, refusal_tokens["token_ids"], selection_json,
                                                         {**selection_key, "optimize": asdict(config.optimize)}, provenance, progress)
    run.write_manifest(stage="direction", model=lm.spec, model_sha256=lm.source_sha256, config=asdict(config))
    return DirectionResult(out_dir=run.path, selection=selection_json, refusal_tokens=refusal_tokens)


def _optimize_stage(run: RunDir, lm: LoadedModel, config: DirectionConfig, diffs: MeanDiffs, prompts: dict, refusal_token_ids: list[int],
                    selection: dict, key: dict, provenance: dict, progress: bool) -> dict:
    """Refine the selected direction (:mod:`.optimize`) as a resumable stage; return ``optimization.json``."""
    done = run.is_done("optimize", key, ["optimization.json"])
    if done:
        record = json.loads(run.file("optimization.json").read_text())
        if not record.get("skipped") and record.get("step") != 0:
            done = run.file(OPTIMIZED_FILENAME).is_file()
    if not done:
        started = time.time()
        scored = [row for row in selection["table"] if row.get("bypass") is not None]
        target = min(scored, key=lambda row: row["bypass"])  # the strongest ablation measured, whatever its KL
        init = diffs.candidate(selection["position"], selection["layer"])
        run.file(OPTIMIZED_FILENAME).unlink(missing_ok=True)  # never leave one from an earlier run
        targets = compliance_targets(lm, prompts["harmful_train"], diffs.candidate(target["position"], target["layer"]),
                                     n_tokens=config.optimize.target_tokens, judge=config.judge,
                                     batch_size=config.generation_batch_size, system=config.system, progress=progress)
        report: dict = {"init": {"point": selection["point"], "position": selection["position"]},
                        "target": {"position": target["position"], "layer": target["layer"], "bypass": target["bypass"]}}
        if not targets:
            logger.warning("no harmful train prompt was answered under ablation of the lowest-bypass candidate; the direction is not refined")
            report["skipped"] = "no compliant answer to train on under ablation of the lowest-bypass candidate"
        else:
            found = optimize_direction(
                lm, init, prompts["harmful_train"], targets, prompts["harmless_train"], prompts["harmful_val"],
                _optimize_kl_prompts(prompts, config), refusal_token_ids, config.optimize,
                scoring_batch_size=config.batch_size, system=config.system, progress=progress,
            )
            # Unit direction scaled to the difference-in-means norm, so actadd:FILE adds a comparable amount. When step 0
            # (the selected direction itself) is kept there is no refined direction: no file, and ablate:DIR applies
            # direction.safetensors, the same direction, exactly.
            if found.step != 0:
                save_direction(run.file(OPTIMIZED_FILENAME), found.direction * init.norm(), selection["point"], position=selection["position"],
                               rule="optimized", optimized_step=found.step, **provenance)
            report.update(found.to_json())
        report["seconds"] = round(time.time() - started, 1)
        write_json(run.file("optimization.json"), report)
        run.mark_done("optimize", key, time.time() - started)
    return json.loads(run.file("optimization.json").read_text())


def _optimize_kl_prompts(prompts: dict, config: DirectionConfig) -> list[str]:
    """The harmless validation prompts the refinement's KL filter uses: ``optimize.n_kl`` of them, from whichever sample has that many."""
    n = config.optimize.n_kl
    if "harmless_kl_optimize" in prompts:
        return prompts["harmless_kl_optimize"]
    return prompts["harmless_kl"] if n == config.n_kl and "harmless_kl" in prompts else prompts["harmless_val"]
