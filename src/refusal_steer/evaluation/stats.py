"""Rates and means with their sample size and a 95% confidence interval.

Every number the evaluation reports is a :class:`Rate`: the point value, the interval, ``n`` and (for
proportions) ``k``, plus the method that made the interval, so a figure is never quoted without
its uncertainty.

- :func:`wilson` is the default for proportions (refusal rate, accuracy). Unlike the percentile
  bootstrap it gives a non-degenerate interval at 0/n and n/n (Wilson 1927; Brown, Cai & DasGupta
  2001 recommend it over the normal approximation for small n).
- :func:`bootstrap` is the percentile bootstrap of a statistic (default the mean), used for
  continuous per-item values such as KL divergences. It is seeded and vectorised: resample indices
  are drawn in blocks of ``(block, n)`` so memory stays bounded for large ``n``.
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
    if block is None:
        block = max(1, min(n_resamples, 4_000_000 // n))
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
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


__all__ = ["CI_METHODS", "DEFAULT_RESAMPLES", "Rate", "bootstrap", "mean_with_ci", "rate_from_bools", "wilson"]
