"""KL divergence of next-token distributions, steered vs unsteered, on harmless prompts.

Arditi et al. (2024, §4.1 and App. C) require a refusal direction's ablation to leave harmless
behaviour intact, measured as the KL divergence at the last prompt position (the position that
predicts the first answer token) between the unsteered and steered model: ``KL(P_base || P_steered)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import scoring
from ..errors import ConfigError
from ..hooks import Intervention
from ..models.loaded import LoadedModel
from .record import ResultRecord, make_record
from .stats import DEFAULT_RESAMPLES, Rate, mean_with_ci

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KlResult:
    """Per-prompt ``KL(P_base || P_steered)`` in nats at the last prompt position, and their mean with a bootstrap CI."""

    mean: Rate
    per_prompt: list[float]
    record: ResultRecord | None = None
    """The mean KL as a :class:`~refusal_steer.evaluation.record.ResultRecord`."""

    @property
    def kl(self) -> float:
        return self.mean.value

    @property
    def ci95(self) -> tuple[float, float]:
        return self.mean.ci95


def evaluate_kl(
    lm: LoadedModel,
    prompts: Sequence[Any],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 8,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    system: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
) -> KlResult:
    """Mean KL divergence between the unsteered and steered next-token distributions on ``prompts``.

    The per-prompt values come from :func:`refusal_steer.scoring.kl_divergence`; this adds the
    bootstrap interval of their mean.

    Args:
        lm: the model.
        prompts: strings, message lists or records (chat-formatted with the model's template).
        interventions: the steering to measure; empty gives 0.
        batch_size: prompts per forward batch.
        n_resamples: bootstrap resamples for the 95% interval of the mean.
        seed: bootstrap seed.
        system: optional system prompt.

    Returns:
        A :class:`KlResult` (``mean`` is a :class:`Rate` with ``k=None``).

    Example:
        >>> evaluate_kl(lm, ["Name a colour."], parse_steer("ablate:runs/dir", lm)).kl  # doctest: +SKIP
        0.04
    """
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("no prompts to measure KL on")
    if not interventions:
        logger.warning("no interventions given: the KL divergence is 0 by definition")
    result = scoring.kl_divergence(lm, prompts, interventions, batch_size=batch_size, system=system)
    per_prompt = [float(x) for x in result.per_prompt]
    mean = mean_with_ci(per_prompt, n_resamples=n_resamples, seed=seed)
    record = make_record("kl", mean, lm, interventions, dataset=dataset, split=split, seed=seed)
    return KlResult(mean=mean, per_prompt=per_prompt, record=record)
