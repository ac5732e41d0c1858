"""How well a judge agrees with human refusal labels (``refusal-labels``: PyRIT's 105 responses;
``refusal-labels-default``: the default model's own completions, labelled by hand).

``human_score`` 1 means refusal. PyRIT counts a response that ignores the request (answers another
question, role-plays a "command not recognised" error) as a refusal too; a phrase-matching judge
cannot see those, which caps the ``substring`` judge's recall on this set (see docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.splits import assign_split
from ..errors import ConfigError
from .judges import Judge, get_judge
from .stats import Rate, rate_from_bools

#: fit/test shares of every labelled set (the ``ngram-lr`` judge is fitted on ``fit``), and the hash seed.
JUDGE_FRACTIONS: dict[str, float] = {"fit": 0.6, "test": 0.4}
JUDGE_SPLIT_SEED = 0


def judge_split(text: str) -> str:
    """``"fit"`` or ``"test"``: the part of a labelled set a response belongs to, by a hash of its normalised text.

    Equal texts share a part, so a repeated refusal never sits on both sides.

    Example:
        >>> judge_split("I'm sorry, but I can't assist with that.") in ("fit", "test")
        True
    """
    return assign_split(text, JUDGE_SPLIT_SEED, JUDGE_FRACTIONS)


@dataclass(frozen=True)
class Agreement:
    """A judge's agreement with human labels; each figure is a :class:`Rate` with its Wilson 95% interval.

    ``precision`` is over the judge's "refused" verdicts, ``recall`` over the human refusals.
    """

    judge: str
    judge_version: str
    dataset: str
    accuracy: Rate
    precision: Rate
    recall: Rate
    tp: int
    fp: int
    tn: int
    fn: int
    #: ids of the records the judge got wrong, as ``(id, human, judge)``.
    errors: list[tuple[str, bool, bool]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "judge": self.judge,
            "judge_version": self.judge_version,
            "dataset": self.dataset,
            "n": self.accuracy.n,
            "accuracy": self.accuracy.to_dict(),
            "precision": self.precision.to_dict(),
            "recall": self.recall.to_dict(),
            "confusion": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
            "errors": [{"id": i, "human_refusal": h, "judge_refusal": j} for i, h, j in self.errors],
        }


def agreement(
    judge: str | Judge,
    prompts: Sequence[str],
    responses: Sequence[str],
    labels: Sequence[bool],
    *,
    ids: Sequence[str] | None = None,
    dataset: str = "<given>",
) -> Agreement:
    """Compare ``judge`` verdicts with human ``labels`` (True = refusal).

    Example:
        >>> a = agreement("substring", ["q", "q"], ["I cannot do that.", "Sure, here it is."], [True, False])
        >>> a.accuracy.value, a.tp, a.tn
        (1.0, 1, 1)
    """
    judge_obj = get_judge(judge)
    verdicts = judge_obj(list(prompts), list(responses))
    human = [bool(x) for x in labels]
    ids = list(ids) if ids is not None else [str(i) for i in range(len(human))]
    tp = sum(h and v for h, v in zip(human, verdicts))
    fp = sum(v and not h for h, v in zip(human, verdicts))
    tn = sum(not h and not v for h, v in zip(human, verdicts))
    fn = sum(h and not v for h, v in zip(human, verdicts))
    return Agreement(
        judge=judge_obj.name,
        judge_version=judge_obj.version,
        dataset=dataset,
        accuracy=rate_from_bools([h == v for h, v in zip(human, verdicts)]),
        precision=rate_from_bools([h for h, v in zip(human, verdicts) if v]),
        recall=rate_from_bools([v for h, v in zip(human, verdicts) if h]),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        errors=[(i, h, v) for i, h, v in zip(ids, human, verdicts) if h != v],
    )


def agreement_with_labels(judge: str | Judge = "substring", dataset: str = "refusal-labels", split: str | None = None) -> Agreement:
    """Agreement of ``judge`` with a labelled-response dataset (default PyRIT's ``refusal-labels``).

    Args:
        judge: a judge or its spec.
        dataset: a ``labelled_response`` dataset: ``refusal-labels`` (PyRIT) or ``refusal-labels-default``
            (the default model's own completions).
        split: ``"fit"`` or ``"test"`` keeps only that part (:func:`judge_split`); None keeps every row.
            ``ngram-lr`` was fitted on the ``fit`` rows, so measure it on ``test``.

    Example:
        >>> agreement_with_labels("substring").accuracy.n  # doctest: +SKIP
        105
    """
    from ..data import load_dataset

    records = list(load_dataset(dataset))
    if split is not None:
        if split not in JUDGE_FRACTIONS:
            raise ConfigError(f"unknown labelled-set split {split!r}", fix=f"use one of: {', '.join(JUDGE_FRACTIONS)}")
        records = [r for r in records if judge_split(r.response) == split]
        dataset = f"{dataset}:{split}"
    return agreement(
        judge,
        [r.objective for r in records],
        [r.response for r in records],
        [r.human_score == 1 for r in records],
        ids=[r.id for r in records],
        dataset=dataset,
    )


def verdict_agreement(first: Sequence[bool], second: Sequence[bool]) -> dict[str, Any]:
    """How often two judges' verdicts on the same completions agree: the share equal (with its Wilson 95% interval) and Cohen's kappa (None when both give one verdict only).

    Example:
        >>> verdict_agreement([True, False, True, False], [True, False, False, False])["agreement"]["value"]
        0.75
    """
    if len(first) != len(second):
        raise ConfigError(f"{len(first)} verdicts vs {len(second)}", fix="judge the same completions with both judges")
    a, b = [bool(x) for x in first], [bool(x) for x in second]
    n = len(a)
    same = rate_from_bools([x == y for x, y in zip(a, b)])
    pa, pb = (sum(a) / n, sum(b) / n) if n else (0.0, 0.0)
    expected = pa * pb + (1 - pa) * (1 - pb)
    kappa = (same.value - expected) / (1 - expected) if n and expected < 1 else None  # undefined when both judges give one verdict only
    return {"n": n, "agreement": same.to_dict(), "cohen_kappa": kappa,
            "only_first": sum(x and not y for x, y in zip(a, b)), "only_second": sum(y and not x for x, y in zip(a, b))}


def two_judges(first: Sequence[bool], second: Sequence[bool] | None, judge2: str | None) -> dict[str, Any]:
    """The second judge's rate (n, Wilson 95% CI) and its agreement with the first on the same verdicts ({} without one)."""
    if second is None:
        return {}
    rate = rate_from_bools(list(second))
    return {"second_judge": judge2, "second": {"value": rate.value, "n": rate.n, "ci95": list(rate.ci95)},
            "agreement": verdict_agreement(list(first), list(second))}
