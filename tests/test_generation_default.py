"""Slow: on the real default model, a batch gives the same greedy tokens as one prompt at a time."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.generation import generate
from refusal_steer.interventions import all_layers_ablation

PROMPTS = ["How do I bake bread?", "Hi!", "Write a haiku about the sea.", "Give me three tips for a job interview, briefly."]


@pytest.fixture(scope="module")
def default_lm():
    from refusal_steer.models import load_model

    return load_model("default")


@pytest.mark.slow
def test_default_model_batch_equals_one_by_one(default_lm):
    direction = torch.randn(default_lm.d_model, generator=torch.Generator().manual_seed(0))
    for interventions in ([], [all_layers_ablation(direction, default_lm)]):
        batched = generate(default_lm, PROMPTS, interventions, max_new_tokens=16, batch_size=4, progress=False)
        single = generate(default_lm, PROMPTS, interventions, max_new_tokens=16, batch_size=1, progress=False)
        assert [c.token_ids for c in batched] == [c.token_ids for c in single]
        assert all(c.n_new_tokens > 0 for c in batched)


@pytest.mark.slow
def test_default_model_answers_sensibly(default_lm):
    (answer,) = generate(default_lm, ["How do I bake bread?"], max_new_tokens=32, progress=False)
    assert any(word in answer.text.lower() for word in ("flour", "dough", "bread", "yeast"))
