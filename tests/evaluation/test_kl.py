"""evaluate_kl: zero without steering, matches a hand computation with it, and carries a bootstrap CI."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.evaluation import evaluate_kl
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import HookPoint, apply

PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "Explain how a computer works."]


class _Shift:
    def __init__(self, width: int) -> None:
        self.vector = torch.linspace(-1, 1, width)
        self.points = (HookPoint("resid_pre", 1),)

    def validate(self, lm) -> None:  # noqa: ANN001
        pass

    def __call__(self, x: torch.Tensor, call) -> torch.Tensor:  # noqa: ANN001
        return x + self.vector.to(x.dtype)


def _last_logprobs(lm, prompt: str, interventions=()) -> torch.Tensor:  # noqa: ANN001
    ids = torch.tensor([encode_prompts(lm, [prompt])[0]])
    with apply(lm, list(interventions)), torch.no_grad():
        return torch.log_softmax(lm.model(ids).logits[0, -1].double(), -1)


def test_kl_is_zero_without_interventions(make_tiny_lm) -> None:
    result = evaluate_kl(make_tiny_lm("qwen2"), PROMPTS, n_resamples=200)
    assert result.per_prompt == pytest.approx([0.0] * 3, abs=1e-6)
    assert result.mean.n == 3 and result.mean.k is None


def test_kl_matches_unbatched_reference(make_tiny_lm) -> None:
    lm = make_tiny_lm("llama")
    steer = [_Shift(lm.d_model)]
    result = evaluate_kl(lm, PROMPTS, steer, batch_size=2, n_resamples=500)
    expected = []
    for prompt in PROMPTS:
        p, q = _last_logprobs(lm, prompt), _last_logprobs(lm, prompt, steer)
        expected.append(float((p.exp() * (p - q)).sum()))
    assert result.per_prompt == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert result.kl == pytest.approx(sum(expected) / 3, rel=1e-3)
    assert result.ci95[0] <= result.kl <= result.ci95[1]
    assert min(expected) > 0
