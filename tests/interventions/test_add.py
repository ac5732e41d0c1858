"""Add: x + coef*v by hand (the vector keeps its norm), positions, and its effect on a model."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError, HookPointError
from refusal_steer.hooks import HookPoint, apply, record
from refusal_steer.interventions import Add

from ._helpers import call_with, padded_batch


def test_Add_matches_hand_sum():
    vector = torch.randn(8) * 3
    x = torch.randn(2, 3, 8)
    call = call_with([[1, 1, 1], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(Add(vector, "resid_pre.0", coef=-2.0)(x, call), x - 2.0 * vector)


def test_Add_only_on_prompt_positions():
    vector = torch.randn(8)
    x = torch.randn(1, 4, 8)
    call = call_with([[0, 1, 1, 0]], [[1, 0, 0, 0]])
    out = Add(vector, "resid_pre.0", positions="prompt")(x, call)
    torch.testing.assert_close(out[:, 1:3], x[:, 1:3] + vector)
    assert torch.equal(out[:, [0, 3]], x[:, [0, 3]])


def test_Add_changes_the_next_layer_input(make_tiny_lm):
    lm = make_tiny_lm("llama")
    batch = padded_batch(lm)
    vector = torch.randn(lm.d_model)
    point = HookPoint.parse("resid_pre.1")
    with torch.no_grad(), record(lm, [point]) as plain:
        lm.model(**batch)
    with torch.no_grad(), apply(lm, [Add(vector, point, coef=0.5)]), record(lm, [point]) as steered:
        lm.model(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(steered[point][real], plain[point][real] + 0.5 * vector)
    assert torch.equal(steered[point][~real], plain[point][~real])  # padding is never steered


def test_Add_rejects_bad_values(make_tiny_lm):
    with pytest.raises(ConfigError):
        Add(torch.randn(8), "resid_pre.0", coef="strong")
    lm = make_tiny_lm("qwen2")
    with pytest.raises(HookPointError, match="out of range"):
        with apply(lm, [Add(torch.randn(lm.d_model), "resid_pre.7")]):
            pass
