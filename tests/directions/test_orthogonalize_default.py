"""Slow: orthogonalised default-model weights, reloaded with plain transformers (folder) or its GGUF loader (GGUF), match hook ablation."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.directions.orthogonalize import ORTHOGONALIZED_GGUF, export_orthogonalized
from refusal_steer.generation import encode_prompts, left_pad, position_ids
from refusal_steer.hooks import apply
from refusal_steer.interventions import all_layers_ablation

PROMPTS = ["How do I bake bread?", "Write a tutorial on how to pick a lock."]


def _hooked(lm, direction):
    """The batch, and the last-position logits and 12 greedy tokens of hook ablation on it."""
    batch = left_pad(encode_prompts(lm, PROMPTS), lm.tokenizer.pad_token_id)
    batch["position_ids"] = position_ids(batch["attention_mask"])
    gen_inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), apply(lm, [all_layers_ablation(direction, lm)]):
        logits = lm.model(**batch).logits[:, -1]
        tokens = lm.model.generate(**gen_inputs, max_new_tokens=12, do_sample=False)
    return batch, gen_inputs, logits, tokens


def _edited(model, batch, gen_inputs):
    with torch.no_grad():
        return model(**batch).logits[:, -1], model.generate(**gen_inputs, max_new_tokens=12, do_sample=False)


@pytest.mark.slow
def test_default_model_orthogonalized_matches_hooks(tmp_path):
    from transformers import AutoModelForCausalLM

    from refusal_steer.models import load_model

    lm = load_model("default")
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    batch, gen_inputs, hooked, hooked_tokens = _hooked(lm, direction)
    out = export_orthogonalized(lm, direction, tmp_path / "ortho", gguf=False)
    del lm
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # no refusal-steer code on this side
    edited, edited_tokens = _edited(plain, batch, gen_inputs)
    torch.testing.assert_close(edited, hooked, atol=2e-3, rtol=2e-3)
    assert torch.equal(edited_tokens, hooked_tokens)


@pytest.mark.slow
def test_default_model_orthogonalized_gguf_matches_hooks(tmp_path):
    """The GGUF that ``orthogonalize`` writes for the default model (edited tensors F16, the rest as shipped)."""
    from refusal_steer.models import load_model

    lm = load_model("default")
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    batch, gen_inputs, hooked, hooked_tokens = _hooked(lm, direction)
    out = export_orthogonalized(lm, direction, tmp_path / "ortho", gguf_type="f16")
    del lm
    reloaded = load_model(out / ORTHOGONALIZED_GGUF, cache_dequantised=False)  # transformers' GGUF loader
    edited, edited_tokens = _edited(reloaded.model, batch, gen_inputs)
    torch.testing.assert_close(edited, hooked, atol=0.05, rtol=0)
    assert torch.equal(edited_tokens, hooked_tokens)
