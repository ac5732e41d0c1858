"""The SAEs shipped for the default model: load by name, and (slow) meet their recorded held-out metrics."""

from __future__ import annotations

import json

import pytest

from refusal_steer.sae import load_sae, sae_info
from refusal_steer.sae.pretrained import SHIPPED, shipped_names, shipped_path


def test_shipped_sae_loads_by_name() -> None:
    assert "default" in shipped_names(), "the default-model SAE is missing from the package"
    sae = load_sae("default", d_model=896)
    assert sae.cfg.arch == "topk" and sae.cfg.d_sae >= 8192 and sae.cfg.k == 32 and sae.cfg.point is not None
    assert sae.W_enc.dtype.is_floating_point and sae.W_enc.dtype.itemsize == 4  # bf16 on disk, float32 in memory
    files = sorted(p.name for p in shipped_path("default").iterdir())
    assert {"cfg.json", "sae_weights.safetensors", "training.json", "README.md"} <= set(files)
    assert sae_info("default")["arch"] == "topk"
    assert str(sae.cfg.point) == "resid_pre.14"


BAND = list(range(10, 19))
"""Layers 10-18, where the default model writes refusal: 13-15 at 8192 latents (k = 32), the rest at 5120 (k = 64)."""


@pytest.mark.parametrize("layer", BAND)
def test_shipped_sae_per_layer(layer: int) -> None:
    """Each layer of the band ships one TopK SAE, at most 32 MiB, whose recorded held-out metrics meet issue #16's bars."""
    name = f"default-resid_pre.{layer}"
    assert name in shipped_names()
    folder = shipped_path(name)
    assert {"cfg.json", "sae_weights.safetensors", "training.json", "README.md", "metrics.json"} <= {p.name for p in folder.iterdir()}
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 32 * 2**20
    sae = load_sae(name, d_model=896)
    assert str(sae.cfg.point) == f"resid_pre.{layer}" and sae.cfg.arch == "topk" and sae.cfg.k == (32 if layer in (13, 14, 15) else 64)
    recorded = json.loads((folder / "metrics.json").read_text())
    assert recorded["point"] == f"resid_pre.{layer}" and recorded["heldout20k_fvu"] <= 0.20
    assert recorded["heldout20k_dead_fraction"] <= 0.05 and recorded["ce_recovered"] >= 0.90


def test_the_band_fits_its_size_budget_and_features_find_uses_it() -> None:
    from refusal_steer.sae.pretrained import default_band

    assert default_band() == [f"default-resid_pre.{layer}" for layer in BAND]
    total = sum(p.stat().st_size for layer in BAND for p in shipped_path(f"default-resid_pre.{layer}").iterdir())
    assert total <= 200 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "default-resid_pre.13", "default-resid_pre.15", "default-resid_pre.10", "default-resid_pre.18"])
def test_shipped_sae_metrics_on_default_model(name: str) -> None:
    """Held-out metrics on a 1,500-token test-split sample stay near the recorded ones."""
    from refusal_steer.models import load_model
    from refusal_steer.sae.model_eval import evaluate_on_model

    recorded = json.loads((shipped_path(name) / "metrics.json").read_text())
    lm = load_model("default")
    sae = load_sae(name, d_model=lm.d_model)
    got = evaluate_on_model(lm, sae, n_tokens=1500, progress=False)
    assert got["l0"] == pytest.approx(float(sae.cfg.k))
    assert got["fvu"] <= recorded["fvu"] + 0.05
    assert got["ce_recovered"] >= recorded["ce_recovered"] - 0.05
