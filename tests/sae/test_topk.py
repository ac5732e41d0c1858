"""TopK: exact L0, sparse kernels equal to the dense computation, AuxK revives dead latents."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.sae import TrainConfig, build_sae, train_sae
from refusal_steer.sae.base import reconstruction_stats

from .conftest import D_SAE, build_cfg, synthetic


def test_l0_equals_k() -> None:
    sae = build_sae(build_cfg("topk", k=5))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive, so exactly k survive the ReLU
    x = synthetic(64)
    assert ((sae.encode(x) != 0).sum(-1) == 5).all()
    assert ((sae(x).latents != 0).sum(-1) == 5).all()
    assert float(sae.training_step(x).l0) == 5.0


def test_sparse_training_step_matches_dense_reference() -> None:
    sae = build_sae(build_cfg("topk", k=4))
    x = synthetic(256)
    sae.initialize_from_data(x)
    out = sae.training_step(x)
    out.loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    xn = sae.normalize_input(x)
    x_hat = sae.decode_normalized(sae.activation(sae.pre_acts_normalized(xn)))
    _, _, fvu = reconstruction_stats(xn, x_hat)
    fvu.backward()
    assert float(fvu.detach()) == pytest.approx(float(out.fvu), rel=1e-5)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, sparse[name], atol=1e-6), name


def test_forward_sparse_decode_matches_dense() -> None:
    sae = build_sae(build_cfg("topk", k=4))
    x = synthetic(32)
    sae.initialize_from_data(x)
    assert torch.allclose(sae(x).x_hat, sae.decode(sae.encode(x)), atol=1e-5)


def _fires(sae, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (sae.encode(x) != 0).any(0)


def test_auxk_revives_dead_latents() -> None:
    x = synthetic(4096)
    counts = {}
    for aux in (0.0, 1 / 32):
        torch.manual_seed(0)
        sae = build_sae(build_cfg("topk", k=4, aux_coefficient=aux))
        sae.initialize_from_data(x)
        with torch.no_grad():
            sae.W_enc[:, :16] *= 0.02  # these latents never win the top-k: dead from the start
        assert not _fires(sae, x)[:16].any()
        cfg = TrainConfig(tokens=4096 * 6, batch_size=256, lr=3e-3, dead_tokens=512, init_from_data=False, progress=False)
        train_sae(sae, [x] * 6, cfg)
        counts[aux] = int(_fires(sae, synthetic(2048, seed=3))[:16].sum())
    assert counts[0.0] == 0
    assert counts[1 / 32] >= 4
    assert D_SAE == 64
