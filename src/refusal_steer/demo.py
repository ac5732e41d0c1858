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

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .directions.io import DIRECTION_FILENAME, OPTIMIZED_FILENAME
from .directions.optimize import OptimizeConfig
from .directions.selection import SelectionConfig
from .runs.config import EvalDataset, EvalSteer, EvaluateConfig, MetricSpec, RunConfig
from .runs.direction import DirectionConfig
from .runs.execute import Announce, execute_run

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


def demo_run_config(config: DemoConfig) -> RunConfig:
    """The :class:`~refusal_steer.runs.config.RunConfig` the demo runs: ``configs/demo.yaml`` is ``demo_run_config(DemoConfig())``.

    Steers, in the order they are generated: baseline; ablation of the selected difference-in-means direction
    (Arditi et al.); capped ablation (when selection wrote ``cap.safetensors``); ablation of the refined direction
    (when the refinement kept a later step than 0, i.e. wrote ``optimized.safetensors``); activation addition
    (calibrated at selection; it may add another candidate than the ablated one). Refusal is measured on held-out
    harmful and harmless test prompts, KL under every ablation on the harmless ones.
    """
    direction = DirectionConfig(
        harmful=config.harmful, harmless=config.harmless, n_train=config.n_train, n_val=config.n_val, n_kl=config.n_kl, seed=config.seed,
        batch_size=config.batch_size, generation_batch_size=config.generation_batch_size, judge=config.judge,
        refusal_token_ids=config.refusal_token_ids, n_token_probe=config.n_token_probe,
        selection=SelectionConfig(screen_top_k=config.screen_top_k, batch_size=config.batch_size,
                                  actadd_candidates=config.actadd_candidates, actadd_positions=config.actadd_positions,
                                  cap_candidates=config.cap_candidates),
        optimize=OptimizeConfig(steps=config.optimize_steps, n_kl=config.optimize_n_kl),
    )
    actadd = "actadd:{run}/direction" + ("" if config.actadd_coef is None else f":coef={config.actadd_coef!r}")
    steers = {
        "baseline": EvalSteer("none"),
        "ablation": EvalSteer("ablate:{run}/direction/" + DIRECTION_FILENAME),
        "cap": EvalSteer("cap:{run}/direction", optional=True),
        "optimized": EvalSteer("ablate:{run}/direction/" + OPTIMIZED_FILENAME, optional=True),
        "actadd": EvalSteer(actadd),
    }
    if not config.cap_candidates:
        del steers["cap"]
    if not config.optimize_steps:
        del steers["optimized"]
    datasets = {"harmful": EvalDataset(config.harmful, "test", config.n_eval), "harmless": EvalDataset(config.harmless, "test", config.n_eval)}
    ablations = tuple(name for name in ("ablation", "cap", "optimized") if name in steers)
    evaluate = EvaluateConfig(
        steers=steers, datasets=datasets,
        metrics=(MetricSpec("refusal", ("harmful", "harmless")), MetricSpec("kl", ("harmless",), ablations)),
        judge=config.judge, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
        generation_batch_size=config.generation_batch_size,
    )
    return RunConfig(model=config.model, seed=config.seed, direction=direction, evaluate=evaluate, report="demo", label=asdict(config))


def run_demo(out_dir: str | Path = "runs/demo", config: DemoConfig = DemoConfig(), *, progress: bool = True,
             announce: Announce | None = None) -> Path:
    """Run (or resume) the demo; return the path of ``report.md``."""
    return execute_run(demo_run_config(config), out_dir, progress=progress, announce=announce)
