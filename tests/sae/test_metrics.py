"""Metrics against hand computations."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.sae import build_sae, evaluate_sae
from refusal_steer.sae.metrics import dead_fraction, dense_fraction, firing_frequencies, fvu, l0, mse

from .conftest import build_cfg, synthetic


def test_pure_metrics_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 2.0]])
    assert float(mse(x, x_hat)) == pytest.approx((0 + 1 + 0 + 4) / 4)
    # variance around the mean (2, 3): 1+1+1+1 = 4; error 5
    assert float(fvu(x, x_hat)) == pytest.approx(5 / 4)
    z = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0], [0.0, 5.0, 0.0, 1.0]])
    assert float(l0(z)) == pytest.approx(5 / 3)
    freqs = firing_frequencies(z)
    assert freqs.tolist() == pytest.approx([0.0, 2 / 3, 0.0, 1.0])
    assert float(dead_fraction(freqs)) == 0.5
    assert float(dense_fraction(freqs, 0.7)) == 0.25


def test_evaluate_streaming_equals_one_shot(arch: str) -> None:
    sae = build_sae(build_cfg(arch))
    sae.initialize_from_data(synthetic(256))
    x = synthetic(300, seed=2)
    m = evaluate_sae(sae, [x[:100], x[100:250], x[250:]])
    with torch.no_grad():
        out = sae(x)
    assert m.n_tokens == 300
    assert m.fvu == pytest.approx(float(fvu(x, out.x_hat)), rel=1e-5)
    assert m.mse == pytest.approx(float(mse(x, out.x_hat)), rel=1e-5)
    assert m.l0 == pytest.approx(float(l0(out.latents)), rel=1e-6)
    freqs = firing_frequencies(out.latents)
    assert m.dead_fraction == pytest.approx(float(dead_fraction(freqs)))
    assert m.dense_fraction == pytest.approx(float(dense_fraction(freqs)))
    assert evaluate_sae(sae, [x], max_tokens=120).n_tokens == 120
