"""Rates and means with their sample size and a 95% confidence interval.

Every number the evaluation reports is a :class:`Rate`: the point value, the interval, ``n`` and (for
proportions) ``k``, plus the method that made the interval, so a figure is never quoted without
its uncertainty.

- :func:`wilson` is the default for proportions (refusal rate, accuracy). Unlike the percentile
  bootstrap it gives a non-degenerate interval at 0/n and n/n (Wilson 1927; Brown, Cai & DasGupta
  2001 recommend it over the normal approximation for small n).
- :func:`bootstrap` is the percentile bootstrap of a statistic (default the mean), used for
  continuous per-item values such as KL divergences. It is seeded and vectorised: resample indices
  are drawn in blocks of ``(block, n)`` so memory stays bounded for large ``n``. With ``strata`` it
  resamples within each group, keeping the group sizes (two-sample differences, AUROC).
- :func:`auroc` is the area under the ROC curve (the Mann-Whitney statistic, ties counted half) and
  :func:`auroc_with_ci` adds its percentile-bootstrap interval over items, resampled within each class
  so every resample has both (an AUROC of one class is undefined); :func:`mean_difference_with_ci` is
  the difference of two groups' means with the same stratified bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError

CiMethod = Literal["wilson", "bootstrap"]
CI_METHODS: tuple[str, ...] = ("wilson", "bootstrap")
DEFAULT_RESAMPLES = 10_000
_Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Rate:
    """A point estimate with its 95% interval: ``value`` in ``[lo, hi]`` from ``n`` items.

    Args:
        value: the estimate (a proportion ``k / n`` or a mean).
        lo: lower end of the 95% confidence interval.
        hi: upper end of the 95% confidence interval.
        n: number of items it was computed from.
        k: number of successes for a proportion; ``None`` for a mean of continuous values.
        method: how the interval was made (``"wilson"``, ``"bootstrap"``, ``"bootstrap-10000-seed0"``...).

    Example:
        >>> r = rate_from_bools([True] * 5 + [False] * 5)
        >>> round(r.value, 2), round(r.lo, 4), round(r.hi, 4), r.n, r.k
        (0.5, 0.2366, 0.7634, 10, 5)
    """

    value: float
    lo: float
    hi: float
    n: int
    k: int | None
    method: str

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"Rate.n must be >= 0, got {self.n}")
        if self.k is not None and not 0 <= self.k <= self.n:
            raise ValueError(f"Rate.k must be in [0, n={self.n}], got {self.k}")

    @property
    def ci95(self) -> tuple[float, float]:
        """The interval as ``(lo, hi)``."""
        return (self.lo, self.hi)

    def to_dict(self) -> dict[str, Any]:
        """Fields as a JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        count = f"{self.k}/{self.n}" if self.k is not None else f"n={self.n}"
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}] ({count}, {self.method})"


def wilson(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95% by default).

    Args:
        k: successes, ``0 <= k <= n``.
        n: trials; ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
        z: normal quantile of the two-sided level.

    Returns:
        ``(lo, hi)``, clipped to ``[0, 1]``.

    Example:
        >>> [round(x, 4) for x in wilson(5, 10)]
        [0.2366, 0.7634]
    """
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ConfigError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact endpoints at k = 0 and k = n (the formula gives them up to rounding).
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def bootstrap(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    block: int | None = None,
    strata: Sequence[int] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (default: the mean).

    Args:
        values: one number per item.
        statistic: maps an array of shape ``(resamples, n)`` to ``(resamples,)``; defaults to the
            row mean. It must be vectorised over rows.
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling (``numpy.random.default_rng``), so intervals are reproducible.
        confidence: the two-sided level.
        block: resamples drawn per block (bounds memory to ``block * n`` indices); chosen from ``n``
            when ``None``. Changing it changes the RNG stream and so the exact interval.
        strata: one group label per value: each resample then draws every group's own count from that
            group only, and lays the groups' columns out one after the other in the order of
            ``numpy.unique(strata)``, so a statistic can tell them apart (see :func:`auroc_with_ci`).

    Returns:
        ``(lo, hi)``; ``(v, v)`` for a single value; ``(nan, nan)`` for no values.

    Example:
        >>> lo, hi = bootstrap([0.0, 1.0] * 50, seed=0)
        >>> 0.39 < lo < 0.5 < hi < 0.61
        True
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    n = data.size
    if n == 0:
        return (math.nan, math.nan)
    stat = statistic or (lambda a: a.mean(axis=1))
    rng = np.random.default_rng(seed)
    groups = None
    if strata is not None:
        labels = np.asarray(strata).reshape(-1)
        if labels.size != n:
            raise ConfigError(f"strata has {labels.size} labels for {n} values")
        groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    if block is None:
        block = max(1, min(n_resamples, 4_000_000 // n))
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        if groups is None:
            idx = rng.integers(0, n, size=(stop - start, n))
        else:
            idx = np.concatenate([members[rng.integers(0, members.size, size=(stop - start, members.size))] for members in groups], axis=1)
        out[start:stop] = stat(data[idx])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(out, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def rate_from_bools(
    flags: Sequence[bool] | np.ndarray,
    *,
    method: CiMethod = "wilson",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Rate:
    """The share of ``True`` in ``flags`` with a 95% interval (Wilson or percentile bootstrap).

    Example:
        >>> rate_from_bools([True, False, False, False]).k
        1
    """
    arr = np.asarray(flags, dtype=bool).reshape(-1)
    n, k = int(arr.size), int(arr.sum())
    value = k / n if n else math.nan
    if method == "wilson":
        lo, hi = wilson(k, n)
        label = "wilson"
    elif method == "bootstrap":
        lo, hi = bootstrap(arr.astype(np.float64), n_resamples=n_resamples, seed=seed)
        label = f"bootstrap-{n_resamples}-seed{seed}"
    else:
        raise ConfigError(f"unknown interval method {method!r}", fix=f"use one of {', '.join(CI_METHODS)}")
    return Rate(value=value, lo=lo, hi=hi, n=n, k=k, method=label)


def mean_with_ci(values: Sequence[float] | np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Rate:
    """The mean of ``values`` with a seeded percentile-bootstrap 95% interval (``k`` is ``None``).

    Example:
        >>> round(mean_with_ci([0.1, 0.2, 0.3]).value, 6)
        0.2
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    value = float(arr.mean()) if arr.size else math.nan
    lo, hi = bootstrap(arr, n_resamples=n_resamples, seed=seed)
    return Rate(value=value, lo=lo, hi=hi, n=int(arr.size), k=None, method=f"bootstrap-{n_resamples}-seed{seed}")


def _row_ranks(rows: np.ndarray) -> np.ndarray:
    """1-based ranks within each row of ``(r, n)`` values, tied values sharing their average rank."""
    r, n = rows.shape
    flat = rows.reshape(-1)
    row_of = np.repeat(np.arange(r), n)
    order = np.lexsort((flat, row_of))  # by row, then by value: each row stays one contiguous block
    values, owners = flat[order], row_of[order]
    starts = np.ones(flat.size, dtype=bool)
    starts[1:] = (values[1:] != values[:-1]) | (owners[1:] != owners[:-1])
    group = np.cumsum(starts) - 1
    position = np.arange(flat.size) - owners * n
    first = position[starts]
    last = np.append(np.flatnonzero(starts)[1:] - 1, flat.size - 1)
    average = (first + position[last]) / 2.0 + 1.0
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = average[group]
    return ranks.reshape(r, n)


def _auroc_rows(rows: np.ndarray, n_negative: int) -> np.ndarray:
    """AUROC of each row whose first ``n_negative`` columns are negatives and the rest positives."""
    n_positive = rows.shape[1] - n_negative
    ranks = _row_ranks(rows)
    return (ranks[:, n_negative:].sum(axis=1) - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative)


def _by_class(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if s.size != y.size:
        raise ConfigError(f"AUROC needs one label per score, got {s.size} scores and {y.size} labels")
    if not np.isfinite(s).all():
        raise ConfigError("AUROC scores must be finite")
    if y.all() or not y.any():
        which = "positive" if y.any() else "negative"
        raise ConfigError(f"AUROC is undefined: all {y.size} items are {which} (it needs both classes)",
                          fix="evaluate on a set holding both classes, or report accuracy only")
    return s[~y], s[y]


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative, ties counting half.

    Args:
        scores: one score per item (higher = more likely positive).
        labels: one bool per item.

    Raises:
        ConfigError: the labels hold one class only (AUROC is then undefined), or lengths differ.

    Example:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
        0.75
    """
    negative, positive = _by_class(scores, labels)
    return float(_auroc_rows(np.concatenate([negative, positive])[None, :], negative.size)[0])


def auroc_with_ci(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, *,
                  n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Rate:
    """:func:`auroc` with a 95% percentile-bootstrap interval over items, resampled within each class.

    Resampling within each class keeps both classes in every resample (a resample of one class has no
    AUROC) and holds the class balance fixed, as pROC's stratified bootstrap does. ``k`` is the number of
    positives.

    Example:
        >>> r = auroc_with_ci([0.1, 0.4, 0.35, 0.8], [False, False, True, True], n_resamples=200)
        >>> r.value, r.n, r.k, r.lo <= r.value <= r.hi
        (0.75, 4, 2, True)
    """
    negative, positive = _by_class(scores, labels)
    data = np.concatenate([negative, positive])
    strata = np.r_[np.zeros(negative.size, dtype=int), np.ones(positive.size, dtype=int)]
    value = float(_auroc_rows(data[None, :], negative.size)[0])
    lo, hi = bootstrap(data, lambda rows: _auroc_rows(rows, negative.size), n_resamples=n_resamples, seed=seed, strata=strata)
    return Rate(value=value, lo=lo, hi=hi, n=int(data.size), k=int(positive.size), method=f"stratified-bootstrap-{n_resamples}-seed{seed}")


def mean_difference_with_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                            n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Rate:
    """``mean(a) - mean(b)`` with a 95% percentile-bootstrap interval, each group resampled on its own.

    ``n`` is the total count; ``k`` is ``None``. An empty group gives ``nan`` for the value and interval.

    Example:
        >>> round(mean_difference_with_ci([1.0, 2.0, 3.0], [0.5, 1.5]).value, 6)
        1.0
    """
    first = np.asarray(a, dtype=np.float64).reshape(-1)
    second = np.asarray(b, dtype=np.float64).reshape(-1)
    method = f"bootstrap-{n_resamples}-seed{seed}-per-group"
    if not first.size or not second.size:
        return Rate(value=math.nan, lo=math.nan, hi=math.nan, n=int(first.size + second.size), k=None, method=method)
    data = np.concatenate([first, second])
    strata = np.r_[np.zeros(first.size, dtype=int), np.ones(second.size, dtype=int)]
    na = first.size
    lo, hi = bootstrap(data, lambda rows: rows[:, :na].mean(axis=1) - rows[:, na:].mean(axis=1), n_resamples=n_resamples,
                       seed=seed, strata=strata)
    return Rate(value=float(first.mean() - second.mean()), lo=lo, hi=hi, n=int(data.size), k=None, method=method)


__all__ = ["CI_METHODS", "DEFAULT_RESAMPLES", "Rate", "auroc", "auroc_with_ci", "bootstrap", "mean_difference_with_ci", "mean_with_ci",
           "rate_from_bools", "wilson"]
