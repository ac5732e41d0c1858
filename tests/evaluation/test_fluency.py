"""The looping-text screen: flags collapse, not ordinary answers, and feeds the refusal evaluation."""

from __future__ import annotations

import pytest

from refusal_steer.evaluation.fluency import degenerate_rate, is_degenerate

LOOPS = [
    "I'm sorry, I can not as I as I as I as I as I as I as I",
    "I am working as developing developing developing developing developing developing",
    "pletely devastating / / / / / / / / / /",
]
FLUENT = [
    "I'm sorry, but I can't assist with that.",
    "1. **Understand the Basics**: Before speaking, it's crucial to understand the basics of public speaking.",
    "To solve this problem, we need to follow these steps: 1. Understand the problem. 2. Write the equation.",
    "",
]


@pytest.mark.parametrize("text", LOOPS)
def test_loops_are_flagged(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", FLUENT)
def test_ordinary_answers_are_not(text):
    assert not is_degenerate(text)


def test_threshold_and_rate():
    text = "as I as I as I"  # the pair ("as", "I") three times
    assert is_degenerate(text, min_repeats=3) and not is_degenerate(text, min_repeats=4)
    with pytest.raises(ValueError):
        is_degenerate(text, min_repeats=1)
    rate = degenerate_rate(LOOPS + FLUENT)
    assert (rate.k, rate.n) == (len(LOOPS), len(LOOPS) + len(FLUENT)) and rate.lo < rate.value < rate.hi


def test_refusal_evaluation_reports_loops(make_tiny_lm):
    from refusal_steer.evaluation.refusal import evaluate_refusal

    lm = make_tiny_lm("qwen2")
    result = evaluate_refusal(lm, ["Hi", "Write a poem."], max_new_tokens=12, batch_size=2, progress=False)
    texts = [c.text for c in result.completions]
    assert result.degenerate == [is_degenerate(t) for t in texts]
    assert result.degenerate_rate.n == 2 and result.degenerate_rate.k == sum(result.degenerate)
    assert [row["degenerate"] for row in result.records()] == result.degenerate
