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


def _spliced_metrics_whole_batch(lm, sae, batch, point, skip_tokens=0):
    """The former spliced_metrics: whole-batch log-probabilities of all four passes kept together (the reference)."""
    from refusal_steer.generation import position_ids
    from refusal_steer.sae.metrics import _next_token_stats, _ZeroAblation

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    mask, ids = inputs["attention_mask"], inputs["input_ids"]
    with torch.no_grad():
        ce0, logp0, valid = _next_token_stats(lm.model(**inputs, use_cache=False).logits, ids, mask)
        if skip_tokens:
            valid = valid & (position_ids(mask)[:, :-1] >= skip_tokens)
        results = {}
        for name, iv in (("spliced", SaeSplice(sae, point, keep_error=False, skip_tokens=skip_tokens)),
                         ("err", SaeSplice(sae, point, keep_error=True, skip_tokens=skip_tokens)),
                         ("zero", _ZeroAblation(point, skip_tokens))):
            with apply(lm, [iv]):
                results[name] = _next_token_stats(lm.model(**inputs, use_cache=False).logits, ids, mask)
    p0 = logp0.exp()
    n = int(valid.sum())
    return {"clean": float(ce0[valid].sum()) / n, "spliced": float(results["spliced"][0][valid].sum()) / n,
            "err": float(results["err"][0][valid].sum()) / n, "zero": float(results["zero"][0][valid].sum()) / n,
            "kl": float((p0 * (logp0 - results["spliced"][1])).sum(-1)[valid].sum()) / n,
            "kl_err": float((p0 * (logp0 - results["err"][1])).sum(-1)[valid].sum()) / n}


@pytest.mark.parametrize("skip_tokens", [0, 2])
def test_spliced_metrics_row_by_row_equals_whole_batch(lm, skip_tokens) -> None:
    """Row-by-row log-probabilities (the memory fix) give exactly the sums of the whole-batch computation."""
    from refusal_steer.generation import position_ids
    from refusal_steer.hooks import HookPoint

    sae = _sae(lm)
    batch = dict(_inputs(lm))
    batch["position_ids"] = position_ids(batch["attention_mask"])
    point = HookPoint.parse("resid_pre.1")
    m = spliced_metrics(lm, sae, [batch], point, skip_tokens=skip_tokens)
    ref = _spliced_metrics_whole_batch(lm, sae, batch, point, skip_tokens)
    assert (m.ce_clean, m.ce_spliced, m.ce_spliced_with_error, m.ce_zero_ablation, m.kl_spliced, m.kl_spliced_with_error) == (
        ref["clean"], ref["spliced"], ref["err"], ref["zero"], ref["kl"], ref["kl_err"])


def test_spliced_metrics_without_the_error_pass_give_the_same_other_numbers(lm) -> None:
    """with_error=False skips the check pass (sae eval's bounded default) and changes no other number."""
    from refusal_steer.generation import position_ids

    sae = _sae(lm)
    batch = dict(_inputs(lm))
    batch["position_ids"] = position_ids(batch["attention_mask"])
    full = spliced_metrics(lm, sae, [batch], "resid_pre.1", skip_tokens=1)
    short = spliced_metrics(lm, sae, [batch], "resid_pre.1", skip_tokens=1, with_error=False)
    assert short.ce_spliced_with_error is None and short.kl_spliced_with_error is None
    assert (short.ce_clean, short.ce_spliced, short.ce_zero_ablation, short.ce_recovered, short.kl_spliced) == (
        full.ce_clean, full.ce_spliced, full.ce_zero_ablation, full.ce_recovered, full.kl_spliced)


def test_final_hidden_then_unembed_is_the_models_logits(tiny_lm) -> None:
    """The spliced pass never builds whole-sequence logits; chunks of unembedded hidden states equal them on every family."""
    from refusal_steer.sae.metrics import final_hidden, unembed

    inputs = _inputs(tiny_lm)
    with torch.no_grad():
        expected = tiny_lm.model(**inputs, use_cache=False).logits
        got = unembed(tiny_lm, final_hidden(tiny_lm, inputs))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
