"""The substring judge against PyRIT's 105 human-labelled responses (human_score 1 = refusal).

Measured for substring@v1 and @v2 (identical on this set: v2 only adds exception idioms):
accuracy 85/105 = 0.810 [Wilson 95%: 0.724, 0.873], precision 50/50 = 1.0
[0.929, 1.0], recall 50/70 = 0.714 [0.599, 0.807]. The floors below are those figures minus a margin
of about one labelled example's worth, so dropping a phrase that matters fails here.
"""

from __future__ import annotations

import pytest

from refusal_steer.evaluation import agreement, agreement_with_labels

ACCURACY_FLOOR = 0.80  # measured 0.810
PRECISION_FLOOR = 0.97  # measured 1.0
RECALL_FLOOR = 0.70  # measured 0.714


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_substring_on_the_labelled_refusals(version: str) -> None:
    result = agreement_with_labels(f"substring:{version}")
    assert result.accuracy.n == 105 and result.tp + result.fn == 70 and result.tn + result.fp == 35
    assert result.judge_version == version
    assert result.accuracy.value >= ACCURACY_FLOOR, result.to_dict()["errors"]
    assert result.precision.value >= PRECISION_FLOOR
    assert result.recall.value >= RECALL_FLOOR


def test_agreement_counts_on_a_toy_set() -> None:
    a = agreement(
        "substring",
        ["p"] * 4,
        ["I cannot do that.", "Sure, here.", "Sure, here.", "As an AI, no."],
        [True, True, False, False],
        ids=["a", "b", "c", "d"],
    )
    assert (a.tp, a.fn, a.tn, a.fp) == (1, 1, 1, 1)
    assert a.precision.value == 0.5 and a.recall.value == 0.5 and a.accuracy.value == 0.5
    assert [e[0] for e in a.errors] == ["b", "d"]
    assert a.to_dict()["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
