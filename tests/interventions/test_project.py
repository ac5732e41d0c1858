"""SetProjection: every selected token ends with projection `value` and keeps its orthogonal part."""

from __future__ import annotations

import torch

from refusal_steer.interventions import SetProjection

from ._helpers import call_with


def test_SetProjection_sets_value_and_keeps_the_rest():
    direction = torch.randn(8)
    r = direction / direction.norm()
    x = torch.randn(2, 3, 8)
    call = call_with([[1, 1, 1], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]])
    out = SetProjection(direction, "resid_pre.0", value=4.0)(x, call)
    torch.testing.assert_close(out @ r, torch.full((2, 3), 4.0))
    torch.testing.assert_close(out - (out @ r).unsqueeze(-1) * r, x - (x @ r).unsqueeze(-1) * r)


def test_SetProjection_on_explicit_indices():
    direction = torch.randn(8)
    r = direction / direction.norm()
    x = torch.randn(1, 4, 8)
    call = call_with([[0, 1, 1, 1]], [[1, 0, 0, 0]])
    out = SetProjection(direction, "resid_pre.0", value=-1.0, positions=[-1])(x, call)
    torch.testing.assert_close(out[0, 3] @ r, torch.tensor(-1.0))
    assert torch.equal(out[:, :3], x[:, :3])
