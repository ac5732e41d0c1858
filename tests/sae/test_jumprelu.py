"""JumpReLU: hand-computed forward, straight-through gradients, float32 thresholds."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.sae import build_sae

from .conftest import build_cfg


def test_forward_by_hand() -> None:
    sae = build_sae(build_cfg("jumprelu", normalize="none", apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    x = torch.randn(8, 16)
    pre = x @ sae.W_enc.detach() + sae.b_enc.detach()
    expected = torch.where(pre > 0.5, pre, torch.zeros_like(pre))
    assert torch.allclose(sae.encode(x), expected)


def test_threshold_gets_straight_through_gradient() -> None:
    sae = build_sae(build_cfg("jumprelu", bandwidth=0.5, init_threshold=0.3))
    x = torch.randn(256, 16)
    out = sae.training_step(x)
    out.loss.backward()
    assert sae.threshold.grad is not None and sae.threshold.grad.abs().sum() > 0


def test_threshold_stays_float32_in_bfloat16() -> None:
    sae = build_sae(build_cfg("jumprelu", dtype="bfloat16"))
    assert sae.W_enc.dtype == torch.bfloat16 and sae.threshold.dtype == torch.float32
    z = sae.encode(torch.randn(4, 16))
    assert z.dtype == torch.bfloat16


def test_batchtopk_threshold_estimated_and_used_at_inference() -> None:
    from refusal_steer.sae import TrainConfig, train_sae

    from .conftest import synthetic

    sae = build_sae(build_cfg("batchtopk", k=4))
    assert float(sae.threshold) < 0  # not estimated yet: inference is a plain ReLU
    train_sae(sae, [synthetic(4096)] * 2, TrainConfig(tokens=2 * 4096, batch_size=256, lr=5e-3, progress=False))
    assert float(sae.threshold) > 0
    l0 = float((sae.encode(synthetic(1024, seed=4)) != 0).sum(-1).float().mean())
    assert 2 <= l0 <= 8  # close to k on average, varying per token


def test_init_l0_sets_thresholds_from_the_first_batch() -> None:
    """With init_l0, the thresholds start where about that many latents fire per token on the data."""
    sae = build_sae(build_cfg("jumprelu", init_l0=4.0))
    x = torch.randn(2048, 16) * 3 + 1
    sae.initialize_from_data(x)
    assert torch.all(sae.threshold == sae.threshold[0]) and sae.threshold[0] > 0.1
    l0 = (sae.encode(x) != 0).float().sum(-1).mean().item()
    assert abs(l0 - 4.0) < 0.5
    plain = build_sae(build_cfg("jumprelu"))
    plain.initialize_from_data(x)
    assert torch.all(plain.threshold == plain.cfg.init_threshold)  # unchanged without init_l0


def test_batchtopk_threshold_is_the_mean_batch_minimum_of_the_final_window() -> None:
    """The saved threshold averages the batch minima of the last ``threshold_window`` of training only."""
    from refusal_steer.sae import TrainConfig, train_sae

    from .conftest import synthetic

    sae = build_sae(build_cfg("batchtopk", k=4, threshold_window=0.25))
    seen: list[tuple[float, float]] = []
    update = sae._update_threshold

    def spy(batch_min, progress):
        seen.append((progress, float(batch_min)))
        update(batch_min, progress)

    sae._update_threshold = spy
    train_sae(sae, [synthetic(4096)] * 2, TrainConfig(tokens=16 * 256, batch_size=256, lr=5e-3, progress=False))
    window = [m for p, m in seen if p >= 0.75]
    assert len(seen) == 16 and len(window) == 4
    assert float(sae.threshold) == pytest.approx(sum(window) / len(window), rel=1e-5)
    assert float(sae.threshold) != pytest.approx(seen[0][1], rel=1e-3)  # the first batches are forgotten


def test_batchtopk_resume_inside_the_threshold_window_is_exact(tmp_path) -> None:
    from refusal_steer.sae import TrainConfig, train_sae
    from refusal_steer.sae.training import latest_checkpoint

    from .conftest import synthetic

    data = [synthetic(512, seed=s) for s in range(3)]
    cfg = TrainConfig(tokens=24 * 64, batch_size=64, buffer_batches=4, lr=3e-3, checkpoint_every=4, progress=False)
    full = build_sae(build_cfg("batchtopk", k=4, threshold_window=0.5))
    train_sae(full, data, cfg, tmp_path / "full")
    part = build_sae(build_cfg("batchtopk", k=4, threshold_window=0.5))
    train_sae(part, data, cfg, tmp_path / "resumed", stop_after=18)  # 6 of the window's 12 steps done
    assert latest_checkpoint(tmp_path / "resumed").name.endswith("18")
    second = build_sae(build_cfg("batchtopk", k=4, threshold_window=0.5))
    train_sae(second, data, cfg, tmp_path / "resumed")
    assert int(second.threshold_count) == 12
    assert torch.allclose(full.threshold, second.threshold, atol=1e-6)


def test_negative_threshold_gates_the_relu() -> None:
    """``ReLU(z) * H(z - theta)`` (Gemma Scope, SAELens): a pre-activation in (theta, 0) gives 0, not a negative latent."""
    sae = build_sae(build_cfg("jumprelu", normalize="none", apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(-1.0, 1.0, sae.cfg.d_sae))
    x = torch.randn(64, 16)
    pre = x @ sae.W_enc.detach() + sae.b_enc.detach()
    assert ((pre > sae.threshold) & (pre < 0)).sum() > 10  # the case that differs from z * H(z - theta)
    expected = torch.where(pre > sae.threshold, pre.clamp_min(0), torch.zeros_like(pre))
    assert torch.allclose(sae.encode(x), expected)


def test_training_forward_equals_inference_with_negative_thresholds() -> None:
    """The training step reconstructs with the same latents as forward(), whatever the thresholds' signs."""
    sae = build_sae(build_cfg("jumprelu", normalize="none"))
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(-1.0, 1.0, sae.cfg.d_sae))
    x = torch.randn(256, 16)
    out = sae.training_step(x)
    with torch.no_grad():
        mse = (sae(x).x_hat - x).pow(2).mean()
    torch.testing.assert_close(out.mse, mse)


def test_threshold_gradient_is_taken_at_the_pre_activation() -> None:
    """Eq. 11's estimate -(theta / eps) K((z - theta) / eps) uses the raw pre-activation z: with theta below
    eps / 2, a negative z (whose ReLU is 0) must not enter it."""
    from refusal_steer.sae.jumprelu import jumprelu

    theta, eps = 0.01, 0.05
    sae = build_sae(build_cfg("jumprelu", normalize="none", bandwidth=eps, l0_coefficient=0.0))
    with torch.no_grad():
        sae.threshold.fill_(theta)
    x = torch.randn(128, 16)
    sae.training_step(x).loss.backward()
    with torch.no_grad():
        pre = sae.pre_acts(x)
    f = jumprelu(pre, sae.threshold.detach()).requires_grad_()
    rec = (sae.decode_normalized(f) - x).pow(2).sum(-1).mean()
    (g_f,) = torch.autograd.grad(rec, f)
    in_kernel = ((pre - theta).abs() < eps / 2).float()
    expected = (g_f * -(theta / eps) * in_kernel).sum(0)
    assert ((pre <= 0) & (in_kernel == 0)).sum() > 100  # entries a ReLU'd z would have counted
    torch.testing.assert_close(sae.threshold.grad, expected, atol=1e-6, rtol=1e-5)
