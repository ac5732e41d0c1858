"""Behaviour every SAE kind shares, parametrized over ALL_ARCHITECTURES."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ShapeMismatchError
from refusal_steer.sae import TrainConfig, build_sae, evaluate_sae, train_sae

from .conftest import D_IN, D_SAE, build_cfg, synthetic


def test_trains_and_reduces_fvu_well_below_one(arch: str) -> None:
    sae = build_sae(build_cfg(arch))
    data = synthetic(4096)
    res = train_sae(sae, [data] * 4, TrainConfig(tokens=4 * 4096, batch_size=256, lr=5e-3, dead_tokens=4096, progress=False))
    assert res.steps == 64
    m = evaluate_sae(sae, [synthetic(2048, seed=1)])
    assert m.fvu < 0.5, m
    assert 0 < m.l0 < D_SAE / 2
    assert res.history[-1]["fvu"] < 0.5


def test_shapes_and_forward_consistency(arch: str) -> None:
    sae = build_sae(build_cfg(arch))
    sae.initialize_from_data(synthetic(512))
    x = synthetic(24).reshape(2, 12, D_IN)
    out = sae(x)
    assert out.x_hat.shape == x.shape and out.latents.shape == (2, 12, D_SAE)
    assert torch.allclose(out.x_hat, sae.decode(sae.encode(x)), atol=1e-5)
    assert (out.latents >= 0).all()


def test_decoder_initialised_from_encoder_transpose(arch: str) -> None:
    sae = build_sae(build_cfg(arch))
    assert torch.equal(sae.W_enc.detach(), sae.W_dec.detach().t())
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, sae.init_decoder_norm), atol=1e-5)


def test_normalisation_is_stored_in_the_sae(arch: str) -> None:
    sae = build_sae(build_cfg(arch))
    x = synthetic(2048)
    sae.initialize_from_data(x)
    xn = sae.normalize_input(x)
    assert float(xn.pow(2).sum(-1).mean()) == pytest.approx(D_IN, rel=1e-4)
    # decode undoes the scale: a zero code decodes to b_dec in raw units
    assert torch.allclose(sae.decode(torch.zeros(D_SAE)), sae.b_dec.detach() / sae.norm_scale, atol=1e-6)


def test_b_dec_init_from_geometric_median(arch: str) -> None:
    from refusal_steer.sae.base import geometric_median

    sae = build_sae(build_cfg(arch))
    x = synthetic(1024)
    sae.initialize_from_data(x, "geometric_median")
    assert torch.allclose(sae.b_dec.detach(), geometric_median(x * sae.norm_scale), atol=1e-5)
    sae.initialize_from_data(x, "mean")
    assert torch.allclose(sae.b_dec.detach(), (x * sae.norm_scale).mean(0), atol=1e-5)


def test_wrong_width_raises(arch: str) -> None:
    sae = build_sae(build_cfg(arch))
    with pytest.raises(ShapeMismatchError, match="d_in=16"):
        sae.encode(torch.randn(3, D_IN + 1))


def test_training_step_output_is_typed_and_finite(arch: str) -> None:
    sae = build_sae(build_cfg(arch))
    x = synthetic(128)
    sae.initialize_from_data(x)
    out = sae.training_step(x, dead=torch.zeros(D_SAE, dtype=torch.bool))
    out.loss.backward()
    for name in ("loss", "mse", "fvu", "l0", "aux_loss"):
        assert torch.isfinite(getattr(out, name)), name
    assert out.fired.dtype == torch.bool and out.fired.shape == (D_SAE,)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in sae.parameters())
