"""The SAE shipped for the default model: loads by name, and (slow) meets its recorded held-out metrics."""

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
    assert sum(p.stat().st_size for p in shipped_path("default").iterdir()) <= 32 * 2**20
    assert set(SHIPPED.values()) == {SHIPPED["default"]}
    assert sae_info("default")["arch"] == "topk"


@pytest.mark.slow
def test_shipped_sae_metrics_on_default_model() -> None:
    """Held-out metrics on a 1,500-token test-split sample stay near the recorded ones."""
    from refusal_steer.models import load_model
    from refusal_steer.sae.model_eval import evaluate_on_model

    recorded = json.loads((shipped_path("default") / "metrics.json").read_text())
    lm = load_model("default")
    sae = load_sae("default", d_model=lm.d_model)
    got = evaluate_on_model(lm, sae, n_tokens=1500, progress=False)
    assert got["l0"] == pytest.approx(32.0)
    assert got["fvu"] <= recorded["fvu"] + 0.05
    assert got["ce_recovered"] >= recorded["ce_recovered"] - 0.05
