"""Intervals against known values: Wilson by hand, bootstrap against the binomial and its own seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refusal_steer.errors import ConfigError
from refusal_steer.evaluation.stats import (Rate, auroc, auroc_with_ci, bootstrap, mean_difference_with_ci, mean_with_ci, rate_from_bools,
                                            wilson)


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


def _auroc_by_pairs(scores: list[float], labels: list[bool]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_hand_count_of_pairs_with_ties_counted_half() -> None:
    scores = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5, 0.5]
    labels = [False, False, True, True, False, True, True]
    # by hand: positives 0.35, 0.8, 0.5, 0.5 vs negatives 0.1, 0.4, 0.5:
    # 0.35 beats 0.1 (1); 0.8 beats all (3); each 0.5 beats 0.1 and 0.4 and ties 0.5 (2.5): (1 + 3 + 2.5 + 2.5) / 12
    assert auroc(scores, labels) == pytest.approx(9 / 12)
    assert auroc(scores, labels) == pytest.approx(_auroc_by_pairs(scores, labels))
    rng = np.random.default_rng(3)
    s, y = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
    assert auroc(s, y) == pytest.approx(_auroc_by_pairs(list(s), list(y)))
    assert auroc([1, 2, 3], [False, True, True]) == 1.0 and auroc([3, 2, 1], [False, True, True]) == 0.0
    with pytest.raises(ConfigError, match="undefined"):
        auroc([0.1, 0.2], [True, True])
    with pytest.raises(ConfigError, match="one label per score"):
        auroc([0.1, 0.2], [True])


def test_auroc_with_ci_is_seeded_stratified_and_brackets_the_value() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.3
    s = rng.normal(size=60) + y * 1.0
    r = auroc_with_ci(s, y, n_resamples=2000, seed=1)
    assert isinstance(r, Rate) and r.n == 60 and r.k == int(y.sum()) and r.method.startswith("stratified-bootstrap-2000")
    assert r.lo <= r.value <= r.hi and 0.0 <= r.lo and r.hi <= 1.0 and r.hi - r.lo > 0.05
    assert r == auroc_with_ci(s, y, n_resamples=2000, seed=1)
    # one positive: every stratified resample still has both classes, so the interval is defined
    one = auroc_with_ci([0.2, 0.1, 0.9, 0.3], [False, False, True, False], n_resamples=500)
    assert one.value == 1.0 and one.lo == one.hi == 1.0
    # the per-row AUROC of a resample matches the plain function on the same rows
    row = np.array([0.3, 0.3, 0.9, 0.1, 0.5])
    assert auroc(row, [False, False, True, True, True]) == pytest.approx(_auroc_by_pairs(list(row), [False, False, True, True, True]))


def test_bootstrap_strata_keep_group_sizes_and_mean_difference() -> None:
    values = np.array([0.0, 0.0, 0.0, 10.0, 10.0])
    strata = [0, 1, 0, 1, 0]  # group 0: 0, 0, 10 ; group 1: 0, 10 -> columns laid out group 0 first

    def check(rows: np.ndarray) -> np.ndarray:
        assert rows.shape[1] == 5
        assert np.isin(rows[:, :3], [0.0, 10.0]).all() and np.isin(rows[:, 3:], [0.0, 10.0]).all()
        return rows[:, :3].mean(axis=1)

    lo, hi = bootstrap(values, check, n_resamples=300, strata=strata)
    assert 0.0 <= lo <= hi <= 10.0
    with pytest.raises(ConfigError, match="strata"):
        bootstrap(values, strata=[0, 1])
    # without strata the stream is unchanged (the same interval as before this option existed)
    assert bootstrap([0.0, 1.0] * 50, seed=0) == bootstrap([0.0, 1.0] * 50, seed=0, strata=None)
    d = mean_difference_with_ci([1.0, 2.0, 3.0], [0.5, 1.5], n_resamples=2000)
    assert d.value == pytest.approx(1.0) and d.lo <= 1.0 <= d.hi and d.n == 5 and d.k is None
    same = mean_difference_with_ci([2.0, 2.0], [2.0, 2.0, 2.0])
    assert same.value == same.lo == same.hi == 0.0
    assert math.isnan(mean_difference_with_ci([], [1.0]).value)
