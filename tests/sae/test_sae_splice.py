"""SAE splice intervention and the spliced CE/KL metrics, on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ShapeMismatchError
from refusal_steer.hooks import apply
from refusal_steer.sae.splice import SaeSplice
from refusal_steer.sae import build_sae
from refusal_steer.sae.metrics import spliced_metrics

from .conftest import build_cfg


@pytest.fixture
def lm(make_tiny_lm):
    return make_tiny_lm("qwen2")


def _inputs(lm):
    return lm.tokenizer(["How do I bake bread?", "Tell me a poem about the sea and the moon."], return_tensors="pt", padding=True)


def _sae(lm, arch="topk"):
    sae = build_sae(build_cfg(arch, d_in=lm.d_model, d_sae=128, point="resid_pre.1"))
    with torch.no_grad():
        lm.model(**_inputs(lm))
    sae.initialize_from_data(torch.randn(256, lm.d_model))
    return sae


def test_keep_error_leaves_output_unchanged(lm) -> None:
    sae = _sae(lm)
    inputs = _inputs(lm)
    with torch.no_grad():
        clean = lm.model(**inputs).logits
        with apply(lm, [SaeSplice(sae, "resid_pre.1", keep_error=True)]):
            kept = lm.model(**inputs).logits
        with apply(lm, [SaeSplice(sae, "resid_pre.1", keep_error=False)]):
            spliced = lm.model(**inputs).logits
        after = lm.model(**inputs).logits
    assert torch.allclose(kept, clean, atol=1e-5)
    assert not torch.allclose(spliced, clean, atol=1e-3)
    assert torch.equal(after, clean)  # removed on exit


def test_wrong_width_is_refused_before_running(lm) -> None:
    sae = build_sae(build_cfg("topk", d_in=lm.d_model + 8, d_sae=32))
    with pytest.raises(ShapeMismatchError):
        with apply(lm, [SaeSplice(sae, "resid_pre.1")]):
            pass


def test_spliced_metrics(lm) -> None:
    sae = _sae(lm)
    m = spliced_metrics(lm, sae, [_inputs(lm)])
    assert m.n_tokens > 0
    assert m.ce_spliced_with_error == pytest.approx(m.ce_clean, abs=1e-4)
    assert m.kl_spliced_with_error == pytest.approx(0.0, abs=1e-5)
    assert m.kl_spliced > 0
    expected = (m.ce_zero_ablation - m.ce_spliced) / (m.ce_zero_ablation - m.ce_clean)
    assert m.ce_recovered == pytest.approx(expected)
