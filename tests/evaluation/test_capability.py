"""Multiple choice by letter log-likelihood, the stratified subset, and GSM8K answer extraction."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from refusal_steer.data import MultipleChoice
from refusal_steer.errors import ConfigError
from refusal_steer.evaluation import (
    evaluate_gsm8k,
    evaluate_multiple_choice,
    extract_final_number,
    mc_user_message,
    stratified_subset,
)
from refusal_steer.evaluation.capability import ANSWER_PREFILL, normalize_number
from refusal_steer.models import format_chat, tokenize_exact

QUESTIONS = [
    MultipleChoice("q0", "What do you mix to bake bread?", ["sand", "flour and water", "oil", "salt only"], 1, "cooking"),
    MultipleChoice("q1", "What rolls in under the moon?", ["waves", "cars"], 0, "poetry"),
    MultipleChoice("q2", "What runs stored instructions?", ["a fox", "a dog", "a processor"], 2, "computing"),
]


def _reference_scores(lm, q: MultipleChoice) -> list[float]:  # noqa: ANN001
    """Score each letter by a separate unpadded forward pass over context + letter tokens."""
    context = tokenize_exact(lm.tokenizer, format_chat(lm.tokenizer, mc_user_message(q.question, q.choices, q.subject)) + ANSWER_PREFILL)
    scores = []
    for i in range(len(q.choices)):
        letter = tokenize_exact(lm.tokenizer, f" {'ABCD'[i]}")
        ids = torch.tensor([context + letter])
        with torch.no_grad():
            logprobs = torch.log_softmax(lm.model(ids).logits[0].double(), -1)
        scores.append(float(sum(logprobs[len(context) - 1 + j, t] for j, t in enumerate(letter))))
    return scores


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_multiple_choice_matches_unbatched_reference(make_tiny_lm, family: str) -> None:
    lm = make_tiny_lm(family)
    result = evaluate_multiple_choice(lm, QUESTIONS, batch_size=2, progress=False)
    for q, item in zip(QUESTIONS, result.items):
        ref = _reference_scores(lm, q)
        assert item["logprobs"] == pytest.approx(ref, abs=1e-4)
        assert item["predicted"] == "ABCD"[max(range(len(ref)), key=ref.__getitem__)]
        assert item["correct"] == (item["predicted"] == item["answer"])
    assert result.accuracy.n == 3 and result.accuracy.k == sum(i["correct"] for i in result.items)
    assert set(result.by_subject) == {"cooking", "poetry", "computing"}
    assert 0 < result.mean_letter_mass <= 1.0 + 1e-6


def test_single_token_letters_use_one_pass(make_tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    """With single-token letters the fast path (one pass per question) gives the reference scores too."""
    lm = make_tiny_lm("qwen2")
    import refusal_steer.evaluation.capability as cap

    real = cap.tokenize_exact
    letters = {f" {c}": [lm.tokenizer.convert_tokens_to_ids(c)] for c in "ABCD"}
    assert all(ids[0] is not None and ids[0] != lm.tokenizer.unk_token_id for ids in letters.values())
    monkeypatch.setattr(cap, "tokenize_exact", lambda tok, text: letters.get(text) or real(tok, text))
    calls = []
    original = cap.last_logprobs
    monkeypatch.setattr(cap, "last_logprobs", lambda *a, **k: calls.append(1) or original(*a, **k))
    result = evaluate_multiple_choice(lm, QUESTIONS, progress=False)
    assert calls, "the single-token path was not taken"
    context = tokenize_exact(lm.tokenizer, format_chat(lm.tokenizer, mc_user_message(QUESTIONS[0].question, QUESTIONS[0].choices, "cooking")) + ANSWER_PREFILL)
    with torch.no_grad():
        ref = torch.log_softmax(lm.model(torch.tensor([context])).logits[0, -1].double(), -1)
    assert result.items[0]["logprobs"] == pytest.approx([float(ref[letters[f" {c}"][0]]) for c in "ABCD"], abs=1e-4)


def test_stratified_subset_is_proportional_deterministic_and_nested() -> None:
    pool = [SimpleNamespace(id=f"{s}-{i}", subject=s) for s, size in (("a", 600), ("b", 300), ("c", 100)) for i in range(size)]
    subset = stratified_subset(pool, 100, seed=0)
    assert Counter(r.subject for r in subset) == {"a": 60, "b": 30, "c": 10}
    # The choice depends on (seed, id), not on the order of the pool.
    assert {r.id for r in stratified_subset(list(reversed(pool)), 100, seed=0)} == {r.id for r in subset}
    bigger = {r.id for r in stratified_subset(pool, 200, seed=0)}
    assert {r.id for r in subset} <= bigger
    assert {r.id for r in stratified_subset(pool, 100, seed=1)} != {r.id for r in subset}
    assert len(stratified_subset(pool, 7, seed=0)) == 7
    assert stratified_subset(pool, None) == pool
    with pytest.raises(ConfigError):
        stratified_subset(pool, 0)


def test_mc_prompt_format() -> None:
    text = mc_user_message("Q?", ["x", "y", "z"], "high_school_physics")
    assert text.splitlines() == [
        "The following is a multiple choice question (with answers) about high school physics.", "", "Q?", "A. x", "B. y", "C. z",
    ]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("She has 3 + 4 = 7 apples. The answer is 7.", "7"),
        ("The answer is: $1,250.", "1250"),
        ("The answer is 12. Wait, the answer is 14", "14"),
        ("so in total 18 eggs", "18"),
        ("He pays 2.50 dollars", "2.5"),
        ("no digits here", None),
    ],
)
def test_extract_final_number(text: str, number: str | None) -> None:
    assert extract_final_number(text) == number


def test_normalize_number() -> None:
    assert normalize_number("1,600") == "1600" and normalize_number("5.0") == "5" and normalize_number("-3") == "-3"


def test_gsm8k_uses_generate_and_exact_match(make_tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    import refusal_steer.evaluation.capability as cap
    from refusal_steer.data import MathProblem
    from refusal_steer.generation import Completion

    texts = ["Reasoning... The answer is 1,600.", "I think 41"]
    def fake_generate(lm, prompts, interventions, **kwargs):  # noqa: ANN001, ANN202
        assert all(cap.GSM8K_INSTRUCTION in p for p in prompts) and kwargs["max_new_tokens"] == 32
        return [Completion(p, t, (), 1, 1, "stop") for p, t in zip(prompts, texts)]

    monkeypatch.setattr(cap, "generate", fake_generate)
    problems = [MathProblem("g0", "How many?", "1600"), MathProblem("g1", "How many more?", "42")]
    result = evaluate_gsm8k(make_tiny_lm("qwen2"), problems, max_new_tokens=32, progress=False)
    assert [i["correct"] for i in result.items] == [True, False] and result.accuracy.k == 1
