"""ProjectionCap (capped ablation): projections above a point's ceiling drop to it, the rest of the activation is kept."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError, ShapeMismatchError
from refusal_steer.hooks import apply
from refusal_steer.interventions import Ablate, ProjectionCap, load_steer_file, save_steer_file

from ._helpers import call_with, padded_batch


def _unit(v):
    return v / v.norm()


def test_ProjectionCap_lowers_only_projections_above_the_ceiling():
    torch.manual_seed(0)
    direction = torch.randn(8)
    r = _unit(direction)
    x = torch.randn(2, 3, 8) + torch.tensor([-3.0, 0.0, 3.0]).view(1, 3, 1) * r  # projections below, near and above 0.5
    call = call_with([[1, 1, 1], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]])
    out = ProjectionCap(direction, ["resid_pre.0"], ceilings=[0.5])(x, call)
    before, after = x @ r, out @ r
    torch.testing.assert_close(after, before.clamp(max=0.5))
    assert (before < 0.5).any() and (before > 0.5).any()  # both cases are exercised
    torch.testing.assert_close(out - after.unsqueeze(-1) * r, x - before.unsqueeze(-1) * r)  # orthogonal part kept


def test_ProjectionCap_uses_the_ceiling_of_the_point_it_is_called_at():
    direction = torch.randn(8)
    r = _unit(direction)
    x = torch.randn(1, 2, 8) + 5 * r
    cap = ProjectionCap(direction, ["resid_pre.0", "resid_pre.1"], ceilings=[1.0, -2.0])
    at0 = cap(x, call_with([[1, 1]], [[0, 0]], point="resid_pre.0"))
    at1 = cap(x, call_with([[1, 1]], [[0, 0]], point="resid_pre.1"))
    torch.testing.assert_close(at0 @ r, torch.full((1, 2), 1.0))
    torch.testing.assert_close(at1 @ r, torch.full((1, 2), -2.0))


def test_ProjectionCap_respects_positions_and_padding():
    direction = torch.randn(8)
    r = _unit(direction)
    x = torch.randn(1, 4, 8) + 5 * r
    call = call_with([[0, 1, 1, 1]], [[1, 0, 0, 0]])
    out = ProjectionCap(direction, ["resid_pre.0"], ceilings=0.0, positions=[-1])(x, call)
    torch.testing.assert_close(out[0, 3] @ r, torch.tensor(0.0))
    assert torch.equal(out[:, :3], x[:, :3])


def test_ProjectionCap_with_ceiling_zero_on_positive_projections_equals_ablation(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    direction = torch.randn(lm.d_model)
    batch = padded_batch(lm)
    x = torch.randn(2, 5, lm.d_model)
    x = x + (5 - x @ _unit(direction)).unsqueeze(-1) * _unit(direction)  # every projection is 5 > 0
    call = call_with([[1] * 5, [1] * 5], [[0] * 5, [0] * 5])
    torch.testing.assert_close(ProjectionCap(direction, ["resid_pre.0"], ceilings=0.0)(x, call),
                               Ablate(direction, ["resid_pre.0"])(x, call))
    # A ceiling nothing reaches changes nothing in a real forward pass.
    points = [f"resid_pre.{layer}" for layer in range(lm.n_layers)]
    with torch.no_grad():
        plain = lm.model(**batch).logits
        with apply(lm, [ProjectionCap(direction, points, ceilings=1e6)]):
            capped = lm.model(**batch).logits
    torch.testing.assert_close(plain, capped)


def test_ProjectionCap_rejects_bad_ceilings():
    direction = torch.randn(8)
    with pytest.raises(ShapeMismatchError, match="2 points but 1 ceilings"):
        ProjectionCap(direction, ["resid_pre.0", "resid_pre.1"], ceilings=[0.0])
    with pytest.raises(ConfigError, match="finite"):
        ProjectionCap(direction, ["resid_pre.0"], ceilings=[float("nan")])
    with pytest.raises(ConfigError, match="must be a finite number"):
        ProjectionCap(direction, ["resid_pre.0"], ceilings=["high"])
    with pytest.raises(ConfigError, match="twice"):
        ProjectionCap(direction, ["resid_pre.0", "resid_pre.0"], ceilings=[0.0, 1.0])


def test_ProjectionCap_round_trips_through_a_steer_file(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    cap = ProjectionCap(torch.randn(lm.d_model), ["resid_pre.0", "resid_pre.1"], ceilings=[0.25, -1.5], positions="generated")
    path = save_steer_file(tmp_path / "steer.yaml", [cap])
    (back,) = load_steer_file(path, lm)
    assert isinstance(back, ProjectionCap) and back.ceilings == (0.25, -1.5) and back.points == cap.points and back.positions == "generated"
    torch.testing.assert_close(back.direction, cap.direction)
