"""Fitting and measuring the ``ngram-lr`` judge on hand-labelled completions.

Two labelled sets, each split into ``fit`` (60%) and ``test`` (40%) by a hash of the normalised
completion text (:func:`judge_split`; equal texts share a part, so a repeated refusal never sits on
both sides):

* ``refusal-labels-default``: the default model's own completions, labelled under
  ``data/labelled/labelled_completions_v1.rules.txt`` (its ``split`` field is this same hash);
* ``refusal-labels``: PyRIT 1.1.0's 105 human-labelled responses, read from the pinned wheel.

:func:`fit_ngram_lr` fits an L2-regularised logistic regression (class-balanced, a regularised bias
feature) on the ``fit`` rows of both. It is solved exactly by Newton's method in the span of the
training rows (the representer form: ``w = X^T alpha``, so only an n x n system is solved), with the
regularisation strength chosen by 5-fold cross-validated log-loss on the ``fit`` rows alone.
Weights are rounded to multiples of 2^-16 before they are stored as float32, so the tiny
floating-point differences of another BLAS do not change a single stored bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.splits import split_unit
from .agreement import JUDGE_FRACTIONS, JUDGE_SPLIT_SEED, Agreement, agreement, judge_split
from .judges import Judge, get_judge
from .judges.ngram_lr import NgramFeatures, featurize, weights_metadata

#: Regularisation strengths tried by cross-validation (lambda of ``lambda/2 * |w|^2`` over a summed loss).
LAMBDAS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CV_FOLDS = 5
_QUANTUM = 2.0**-16


@dataclass(frozen=True)
class LabelledRow:
    """One labelled completion: ``label`` True = refusal; ``dataset`` names the set it came from."""

    id: str
    prompt: str
    text: str
    label: bool
    dataset: str
    condition: str
    split: str


def labelled_rows(datasets: Sequence[str] = ("refusal-labels-default", "refusal-labels")) -> list[LabelledRow]:
    """The rows of the labelled sets, each with its fit/test part (:func:`judge_split`).

    The default model's rows keep their ``condition`` (baseline, ablation, ...); PyRIT's get ``"pyrit"``.
    """
    from ..data import load_dataset
    from ..data.sources.judging import read_labelled_completions

    rows: list[LabelledRow] = []
    for name in datasets:
        if name == "refusal-labels-default":
            for r in read_labelled_completions():
                rows.append(LabelledRow(r["id"], r["prompt"], r["text"], r["label"], name, r["condition"], judge_split(r["text"])))
        else:
            for rec in load_dataset(name):
                rows.append(LabelledRow(rec.id, rec.objective, rec.response, rec.human_score == 1, name, "pyrit", judge_split(rec.response)))
    return rows


def _gram(rows: tuple[np.ndarray, np.ndarray, np.ndarray], width: int) -> np.ndarray:
    """K = X X^T of CSR rows (dense n x n, float64)."""
    indptr, indices, values = rows
    n = len(indptr) - 1
    gram = np.zeros((n, n), dtype=np.float64)
    dense = np.zeros(width, dtype=np.float64)
    for i in range(n):
        lo, hi = indptr[i], indptr[i + 1]
        dense[indices[lo:hi]] = values[lo:hi]
        gram[:, i] = np.add.reduceat(dense[indices] * values, indptr[:-1])
        dense[indices[lo:hi]] = 0.0
    return (gram + gram.T) / 2.0


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _objective(alpha: np.ndarray, gram: np.ndarray, y: np.ndarray, cost: np.ndarray, lam: float) -> float:
    f = gram @ alpha
    return float(np.sum(cost * np.logaddexp(0.0, -y * f)) + 0.5 * lam * alpha @ f)


def _newton(gram: np.ndarray, y: np.ndarray, cost: np.ndarray, lam: float, tol: float = 1e-12, max_iter: int = 200) -> np.ndarray:
    """Minimise sum_i cost_i log(1 + exp(-y_i f_i)) + lam/2 alpha^T K alpha with f = K alpha (y in {-1, +1}).

    The Newton step solves (D K + lam I) delta = -(g + lam alpha): the full step K (K D K + lam K)^-1 K ... reduced
    by K, which is exact in function space even when K is singular; a backtracking line search keeps it monotone.
    """
    n = len(y)
    alpha = np.zeros(n)
    current = _objective(alpha, gram, y, cost, lam)
    for _ in range(max_iter):
        f = gram @ alpha
        g = -cost * y * _sigmoid(-y * f)
        d = cost * _sigmoid(f) * _sigmoid(-f)
        step = np.linalg.solve(d[:, None] * gram + lam * np.eye(n), -(g + lam * alpha))
        t = 1.0
        while True:
            candidate = alpha + t * step
            value = _objective(candidate, gram, y, cost, lam)
            if value <= current or t < 1e-8:
                break
            t /= 2.0
        alpha, previous, current = candidate, current, value
        if np.max(np.abs(t * step)) < tol or previous - current < tol * max(1.0, abs(current)) and t == 1.0:
            break
    return alpha


def _balanced_cost(y: np.ndarray) -> np.ndarray:
    positives = float(np.sum(y > 0))
    negatives = float(len(y) - positives)
    if not positives or not negatives:
        raise ValueError("the fit rows need both refusals and non-refusals")
    return np.where(y > 0, len(y) / (2.0 * positives), len(y) / (2.0 * negatives))


def _cv_loss(gram: np.ndarray, y: np.ndarray, folds: np.ndarray, lam: float) -> tuple[float, float]:
    """Mean held-out log-loss and accuracy over the folds (unweighted, per row)."""
    losses, hits = [], []
    for k in range(CV_FOLDS):
        train, held = folds != k, folds == k
        if not held.any() or not train.any():
            continue
        alpha = _newton(gram[np.ix_(train, train)], y[train], _balanced_cost(y[train]), lam)
        f = gram[np.ix_(held, train)] @ alpha
        losses.extend(np.logaddexp(0.0, -y[held] * f).tolist())
        hits.extend(((f >= 0) == (y[held] > 0)).tolist())
    return float(np.mean(losses)), float(np.mean(hits))


@dataclass(frozen=True)
class FitResult:
    """Fitted float32 weights (bias last), their feature settings and the fit's provenance."""

    weights: np.ndarray
    features: NgramFeatures
    threshold: float
    meta: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        """Write the weights atomically as safetensors (one ``weights`` tensor plus string metadata)."""
        import torch

        from ..atomic import atomic_save_safetensors

        return atomic_save_safetensors({"weights": torch.from_numpy(self.weights.copy())}, path,
                                       metadata=weights_metadata(self.features, self.threshold, self.meta))


def rows_digest(rows: Sequence[LabelledRow]) -> str:
    """sha256 over the fit rows' (dataset, id, label, text): names the data a weights file was fitted on."""
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r.dataset}\x00{r.id}\x00{int(r.label)}\x00{r.text}\x01".encode())
    return digest.hexdigest()


def fit_ngram_lr(rows: Sequence[LabelledRow] | None = None, features: NgramFeatures | None = None,
                 lambdas: Sequence[float] = LAMBDAS) -> FitResult:
    """Fit the ``ngram-lr`` weights on the ``fit`` rows (default: both labelled sets); deterministic.

    Args:
        rows: labelled rows; only those with ``split == "fit"`` are used.
        features: feature settings (default :class:`NgramFeatures`).
        lambdas: regularisation strengths; the one with the lowest 5-fold CV log-loss is refitted on all fit rows.

    Returns:
        The :class:`FitResult` (save it with ``.save(path)``).

    Example:
        >>> result = fit_ngram_lr()  # doctest: +SKIP
        >>> result.meta["lambda"]  # doctest: +SKIP
    """
    features = features or NgramFeatures()
    rows = [r for r in (labelled_rows() if rows is None else rows) if r.split == "fit"]
    csr = featurize([r.text for r in rows], features)
    gram = _gram(csr, features.width)
    y = np.array([1.0 if r.label else -1.0 for r in rows])
    folds = np.array([min(CV_FOLDS - 1, int(split_unit(r.text, seed=1) * CV_FOLDS)) for r in rows])
    cv = {repr(lam): _cv_loss(gram, y, folds, lam) for lam in lambdas}
    best = min(lambdas, key=lambda lam: (round(cv[repr(lam)][0], 12), -lam))
    alpha = _newton(gram, y, _balanced_cost(y), best)
    indptr, indices, values = csr
    row_of = np.repeat(np.arange(len(rows)), np.diff(indptr))
    weights = np.bincount(indices, weights=values * alpha[row_of], minlength=features.width)
    weights = (np.round(weights / _QUANTUM) * _QUANTUM).astype(np.float32)
    per_set = {}
    for r in rows:
        counts = per_set.setdefault(r.dataset, {"refusal": 0, "not_refusal": 0})
        counts["refusal" if r.label else "not_refusal"] += 1
    meta = {
        "lambda": best,
        "cv": {lam: {"log_loss": round(loss, 6), "accuracy": round(acc, 6)} for lam, (loss, acc) in cv.items()},
        "fit_rows": per_set,
        "fit_rows_sha256": rows_digest(rows),
        "split": {"fractions": JUDGE_FRACTIONS, "seed": JUDGE_SPLIT_SEED},
        "class_weight": "balanced",
        "quantum": "2^-16",
    }
    return FitResult(weights, features, 0.5, meta)


@dataclass(frozen=True)
class HeldOut:
    """One judge's agreement with the labels on one group of held-out rows."""

    group: str
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        d = self.agreement.to_dict()
        d.pop("errors")
        return {"group": self.group, **d}


def held_out_agreement(judges: Sequence[str | Judge] = ("ngram-lr", "substring"),
                       rows: Sequence[LabelledRow] | None = None, split: str = "test") -> list[HeldOut]:
    """Accuracy, precision and recall (Wilson 95%) of each judge on the ``split`` rows: per labelled set and pooled."""
    rows = [r for r in (labelled_rows() if rows is None else rows) if r.split == split]
    groups: dict[str, list[LabelledRow]] = {}
    for r in rows:
        groups.setdefault(r.dataset, []).append(r)
    groups["pooled"] = list(rows)
    out = []
    for spec in judges:
        judge = get_judge(spec)
        for group, members in groups.items():
            a = agreement(judge, [r.prompt for r in members], [r.text for r in members], [r.label for r in members],
                          ids=[r.id for r in members], dataset=f"{group}:{split}")
            out.append(HeldOut(group, a))
    return out


def format_table(results: Sequence[HeldOut]) -> str:
    """A Markdown table of :func:`held_out_agreement` results."""
    lines = ["| judge | rows | n | accuracy | precision | recall | confusion |", "|---|---|---|---|---|---|---|"]
    for h in results:
        a = h.agreement
        lines.append(f"| `{a.judge}@{a.judge_version}` | {h.group} | {a.accuracy.n} | {_cell(a.accuracy)} | {_cell(a.precision)} | "
                     f"{_cell(a.recall)} | tp {a.tp}, fp {a.fp}, tn {a.tn}, fn {a.fn} |")
    return "\n".join(lines)


def _cell(rate: Any) -> str:
    if not rate.n:
        return "n/a"
    lo, hi = rate.ci95
    return f"**{rate.value:.3f}** [{lo:.3f}, {hi:.3f}] ({rate.k}/{rate.n})"


__all__ = ["CV_FOLDS", "FitResult", "HeldOut", "JUDGE_FRACTIONS", "LAMBDAS", "LabelledRow", "fit_ngram_lr",
           "format_table", "held_out_agreement", "judge_split", "labelled_rows", "rows_digest"]
