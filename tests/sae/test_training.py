"""Trainer: shuffle buffer, schedule, checkpoints, exact resume, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refusal_steer.errors import ConfigError, EmptyDatasetError
from refusal_steer.sae import TrainConfig, build_sae, train_sae
from refusal_steer.sae.constants import CHECKPOINTS_DIRNAME, LATEST_CHECKPOINT_FILENAME, TRAINING_FILENAME
from refusal_steer.sae.training import latest_checkpoint, shuffled_batches

from .conftest import build_cfg, synthetic


def _cfg(**kw) -> TrainConfig:
    base = dict(tokens=24 * 64, batch_size=64, buffer_batches=4, lr=3e-3, dead_tokens=128, checkpoint_every=8, progress=False)
    return TrainConfig(**{**base, **kw})


def test_shuffled_batches_deterministic_and_resumable() -> None:
    chunks = [torch.arange(i * 50, (i + 1) * 50, dtype=torch.float32)[:, None].repeat(1, 2) for i in range(7)]
    full = list(shuffled_batches(chunks, 16, 3, seed=1))
    assert sum(b.shape[0] for b in full) == 350
    assert torch.equal(torch.cat(full)[:, 0].sort().values, torch.arange(350.0))
    again = list(shuffled_batches(chunks, 16, 3, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(full, again, strict=True))
    for start in (1, 3, 5, 10):
        tail = list(shuffled_batches(chunks, 16, 3, seed=1, start_step=start))
        assert len(tail) == len(full) - start
        assert all(torch.equal(a, b) for a, b in zip(full[start:], tail, strict=True))
    assert not torch.equal(full[0], list(shuffled_batches(chunks, 16, 3, seed=2))[0])


def test_lr_schedule_warmup_and_decay() -> None:
    cfg = TrainConfig(tokens=100 * 10, batch_size=10, warmup_fraction=0.1, decay_fraction=0.2)
    assert cfg.total_steps == 100
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(9) == 1.0
    assert cfg.lr_factor(50) == 1.0
    assert cfg.lr_factor(90) == pytest.approx(0.5) and cfg.lr_factor(99) == pytest.approx(0.05)
    assert cfg.peak_lr(2**14) == pytest.approx(2e-4) and cfg.peak_lr(2**16) == pytest.approx(1e-4)


@pytest.mark.parametrize("field,value", [("tokens", 0), ("batch_size", 0), ("lr", -1.0), ("b_dec_init", "median"), ("warmup_fraction", 2.0)])
def test_train_config_validation_names_field(field: str, value) -> None:
    kw = {"tokens": 10, field: value}
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kw)


def test_same_seed_same_weights(arch: str) -> None:
    data = [synthetic(512)] * 3
    a, b = build_sae(build_cfg(arch)), build_sae(build_cfg(arch))
    train_sae(a, data, _cfg(checkpoint_every=0, tokens=16 * 64))
    torch.manual_seed(123)  # the global RNG does not matter: TrainConfig.seed does
    train_sae(b, data, _cfg(checkpoint_every=0, tokens=16 * 64))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_resume_after_interrupt_equals_uninterrupted(arch: str, tmp_path: Path) -> None:
    data = [synthetic(512, seed=s) for s in range(3)]
    full = build_sae(build_cfg(arch))
    res_full = train_sae(full, data, _cfg(), tmp_path / "full")
    assert res_full.steps == 24

    first = build_sae(build_cfg(arch))
    part = train_sae(first, data, _cfg(), tmp_path / "resumed", stop_after=13)  # "crash" after step 13
    assert part.steps == 13
    ckpt = latest_checkpoint(tmp_path / "resumed")
    assert ckpt is not None and ckpt.name.endswith("13")  # the partial run checkpointed where it stopped
    second = build_sae(build_cfg(arch))
    res = train_sae(second, data, _cfg(), tmp_path / "resumed")
    assert res.resumed_from == 13 and res.steps == 24 and res.tokens == 24 * 64
    for (name, p), q in zip(full.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_resume_from_periodic_checkpoint(tmp_path: Path) -> None:
    data = [synthetic(512, seed=s) for s in range(3)]
    full = build_sae(build_cfg("topk"))
    train_sae(full, data, _cfg(), tmp_path / "full")
    # simulate a crash right after the step-16 checkpoint: keep that checkpoint only
    run = tmp_path / "run"
    train_sae(build_sae(build_cfg("topk")), data, _cfg(), run, stop_after=16)
    resumed = build_sae(build_cfg("topk"))
    res = train_sae(resumed, data, _cfg(), run)
    assert res.resumed_from == 16
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_checkpoint_files(tmp_path: Path) -> None:
    train_sae(build_sae(build_cfg("topk")), [synthetic(512)] * 3, _cfg(keep_checkpoints=2), tmp_path)
    root = tmp_path / CHECKPOINTS_DIRNAME
    steps = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert steps == ["step_000000016", "step_000000024"]
    assert json.loads((root / LATEST_CHECKPOINT_FILENAME).read_text())["step"] == 24
    assert not list(root.glob(".*tmp"))
    record = json.loads((tmp_path / TRAINING_FILENAME).read_text())
    assert record["steps"] == 24 and record["final"]["l0"] > 0
    from refusal_steer.sae import load_sae

    assert load_sae(tmp_path).cfg.arch == "topk"


def test_empty_source_raises() -> None:
    with pytest.raises(EmptyDatasetError):
        train_sae(build_sae(build_cfg("topk")), [], _cfg(checkpoint_every=0))


def test_dead_fraction_reported() -> None:
    res = train_sae(build_sae(build_cfg("topk", k=1)), [synthetic(512)] * 3, _cfg(checkpoint_every=0, log_every=4))
    assert all(0.0 <= h["dead_fraction"] <= 1.0 for h in res.history)
    assert {"loss", "l0", "dead_fraction", "tokens_per_s"} <= set(res.history[-1])
