"""Ablate: x - (x.r)r by hand, positions, the residual-write points, and width validation."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError, ShapeMismatchError
from refusal_steer.hooks import HookPoint, Site, apply, record
from refusal_steer.interventions import Ablate, all_layers_ablation, residual_writes

from ._helpers import call_with, padded_batch


def test_Ablate_matches_hand_projection():
    direction = torch.randn(8)
    x = torch.randn(2, 3, 8)
    call = call_with([[1, 1, 1], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]])
    out = Ablate(direction, ["resid_pre.0"])(x, call)
    r = direction / direction.norm()
    expected = x - (x @ r).unsqueeze(-1) * r
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out @ r, torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_Ablate_stores_unit_float32_and_casts_once():
    ablation = Ablate(torch.randn(8, dtype=torch.float64) * 5, "resid_pre.0")
    assert ablation.direction.dtype == torch.float32
    torch.testing.assert_close(ablation.direction.norm(), torch.tensor(1.0))
    call = call_with([[1, 1]], [[0, 0]])
    x = torch.randn(1, 2, 8, dtype=torch.bfloat16)
    assert ablation(x, call).dtype == torch.bfloat16
    first = ablation._cast.get(ablation.direction, x)
    assert ablation._cast.get(ablation.direction, x) is first


def test_Ablate_skips_padding_and_unselected_positions():
    x = torch.randn(1, 4, 8)
    call = call_with([[0, 1, 1, 0]], [[1, 0, 0, 0]])
    out = Ablate(torch.randn(8), "resid_pre.0", positions="generated")(x, call)
    assert torch.equal(out[:, :3], x[:, :3])
    assert not torch.allclose(out[:, 3], x[:, 3])
    out_all = Ablate(torch.randn(8), "resid_pre.0")(x, call)
    assert torch.equal(out_all[:, 0], x[:, 0])


def test_Ablate_rejects_bad_directions():
    with pytest.raises(ConfigError, match="zero norm"):
        Ablate(torch.zeros(8), "resid_pre.0")
    with pytest.raises(ShapeMismatchError):
        Ablate(torch.zeros(2, 8), "resid_pre.0")


def test_Ablate_validate_rejects_wrong_width(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    with pytest.raises(ShapeMismatchError, match="width 10"):
        with apply(lm, [Ablate(torch.randn(10), "resid_pre.0")]):
            pass
    assert sum(len(m._forward_pre_hooks) for m in lm.model.modules()) == 0


def test_residual_writes_cover_every_layer(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    points = residual_writes(lm)
    assert len(points) == 3 * lm.n_layers
    assert {p.site for p in points} == {Site.RESID_PRE, Site.ATTN_OUT, Site.MLP_OUT}


def test_all_layers_ablation_removes_direction_from_residual_stream(tiny_lm):
    """Ablating every write leaves no component along r in any block's output (Arditi et al. §2.4)."""
    batch = padded_batch(tiny_lm)
    direction = torch.randn(tiny_lm.d_model)
    last = HookPoint(Site.RESID_POST, tiny_lm.n_layers - 1)
    with torch.no_grad(), apply(tiny_lm, [all_layers_ablation(direction, tiny_lm)]), record(tiny_lm, [last]) as rec:
        tiny_lm.model(**batch)
    real = batch["attention_mask"].bool()
    projection = rec[last][real] @ (direction / direction.norm())
    assert projection.abs().max() < 1e-4
