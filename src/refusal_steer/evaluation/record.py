"""One result record for every evaluation: what was measured, its value with n and a 95% interval, and under what.

``evaluate_refusal``, ``evaluate_kl``, ``evaluate_multiple_choice`` (MMLU, ARC) and ``evaluate_gsm8k``
each return their detailed result with a :class:`ResultRecord` in ``.record``; ``refusal-steer eval``, the
demo and ``refusal-steer run`` write ``record.to_dict()`` the same way, so a number can always be traced
to the steer (fingerprint and readable spec), the model (sha256), the data (dataset and split), the judge
(name@version) and the seed it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..hooks import Intervention
from ..interventions.registry import describe, fingerprint
from ..models.loaded import LoadedModel
from .stats import Rate


@dataclass(frozen=True)
class ResultRecord:
    """A measured value with its provenance.

    Attributes:
        metric: ``refusal_rate``, ``kl``, ``mmlu_accuracy``, ``arc_accuracy``, ``gsm8k_accuracy``...
        value: the estimate.
        n: items it was computed from.
        ci95: the 95% interval.
        ci_method: how the interval was made (``wilson``, ``bootstrap-10000-seed0``...).
        k: successes, for a proportion (None for a mean).
        judge: ``name@version`` of the refusal judge (None where no judge is involved).
        dataset: the dataset name (or user file), when the caller knows it.
        split: the split it was drawn from.
        steer: the steer's :func:`~refusal_steer.interventions.fingerprint` (the unsteered model has one too).
        steer_spec: the steer, readable (:func:`~refusal_steer.interventions.describe`).
        model: the model spec.
        model_sha256: the hash of the model's weights file, when known.
        seed: the seed used (data subset, bootstrap).
    """

    metric: str
    value: float
    n: int
    ci95: tuple[float, float]
    ci_method: str
    k: int | None = None
    judge: str | None = None
    dataset: str | None = None
    split: str | None = None
    steer: str = ""
    steer_spec: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    model_sha256: str | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the ``record`` of every written result)."""
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        return out


def make_record(metric: str, rate: Rate, lm: LoadedModel, interventions: Sequence[Intervention], *, judge: str | None = None,
                dataset: str | None = None, split: str | None = None, seed: int | None = None) -> ResultRecord:
    """The record of one measurement (``rate``) of ``lm`` under ``interventions``.

    A steer holding an unregistered intervention (a trainable one, a recorder) has no fingerprint: ``steer``
    is then ``"unregistered"`` and ``steer_spec`` names the kinds.
    """
    try:
        steer, spec = fingerprint(interventions), describe(interventions)
    except ConfigError:
        steer, spec = "unregistered", [{"kind": getattr(i, "kind", type(i).__name__)} for i in interventions]
    return ResultRecord(metric=metric, value=rate.value, n=rate.n, ci95=(rate.lo, rate.hi), ci_method=rate.method, k=rate.k,
                        judge=judge, dataset=dataset, split=split, steer=steer, steer_spec=spec,
                        model=lm.spec, model_sha256=lm.source_sha256, seed=seed)
