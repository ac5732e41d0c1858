"""Intervals against known values: Wilson by hand, bootstrap against the binomial and its own seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refusal_steer.errors import ConfigError
from refusal_steer.evaluation.stats import Rate, bootstrap, mean_with_ci, rate_from_bools, wilson


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (5, 10, 0.236593, 0.763407),  # symmetric around 0.5
        (0, 10, 0.0, 0.277533),  # 0/n keeps a non-degenerate upper end
        (10, 10, 0.722467, 1.0),
        (1, 100, 0.001767, 0.054486),
    ],
)
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-6)


def test_wilson_matches_newcombe_1998() -> None:
    # Newcombe (1998), Stat. Med. 17:857, Table I: 81/263 -> Wilson score interval 0.2553 to 0.3662.
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)


def test_wilson_matches_the_closed_form() -> None:
    z = 1.959963984540054
    k, n = 37, 91
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson(k, n) == pytest.approx((centre - half, centre + half), rel=1e-12)


def test_wilson_edges() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ConfigError):
        wilson(3, 2)


def test_bootstrap_is_seeded_and_close_to_the_normal_interval() -> None:
    continuous = np.random.default_rng(0).normal(size=50)
    assert bootstrap(continuous, seed=1) == bootstrap(continuous, seed=1)
    assert bootstrap(continuous, seed=1) != bootstrap(continuous, seed=2)
    values = np.r_[np.ones(30), np.zeros(70)]
    a = bootstrap(values, seed=1)
    se = math.sqrt(0.3 * 0.7 / 100)
    assert a[0] == pytest.approx(0.3 - 1.96 * se, abs=0.02)
    assert a[1] == pytest.approx(0.3 + 1.96 * se, abs=0.02)


def test_bootstrap_blocks_do_not_change_the_statistic_distribution() -> None:
    rng = np.random.default_rng(0)
    values = rng.exponential(size=400)
    small_blocks = bootstrap(values, seed=0, block=7)
    default = bootstrap(values, seed=0)
    assert small_blocks == pytest.approx(default, abs=0.02)


def test_bootstrap_custom_statistic_and_degenerate_inputs() -> None:
    lo, hi = bootstrap([1.0, 2.0, 3.0, 100.0], statistic=lambda a: np.median(a, axis=1), n_resamples=2000)
    assert 1.0 <= lo <= hi <= 100.0
    assert bootstrap([4.0]) == (4.0, 4.0)
    assert all(math.isnan(x) for x in bootstrap([]))
    with pytest.raises(ConfigError):
        bootstrap([1.0], n_resamples=0)


def test_rate_from_bools_both_methods() -> None:
    flags = [True] * 5 + [False] * 5
    w = rate_from_bools(flags)
    assert (w.value, w.n, w.k, w.method) == (0.5, 10, 5, "wilson")
    assert w.ci95 == pytest.approx((0.236593, 0.763407), abs=2e-6)
    b = rate_from_bools(flags, method="bootstrap", n_resamples=1000, seed=3)
    assert b.method == "bootstrap-1000-seed3" and b.lo < 0.5 < b.hi
    with pytest.raises(ConfigError):
        rate_from_bools(flags, method="normal")  # type: ignore[arg-type]


def test_mean_with_ci_and_rate_validation() -> None:
    r = mean_with_ci([0.0, 0.1, 0.2, 0.3], n_resamples=500)
    assert r.k is None and r.n == 4 and r.lo <= r.value <= r.hi
    assert r.to_dict()["method"] == "bootstrap-500-seed0"
    with pytest.raises(ValueError, match="Rate.k"):
        Rate(value=0.5, lo=0.0, hi=1.0, n=2, k=3, method="wilson")
