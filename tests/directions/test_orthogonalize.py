"""Weight orthogonalisation equals hook-based ablation at every residual write."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.directions.orthogonalize import export_orthogonalized, orthogonalize_
from refusal_steer.errors import ShapeMismatchError, UnsupportedFamilyError
from refusal_steer.hooks import apply
from refusal_steer.interventions import all_layers_ablation
from refusal_steer.models import format_chat, load_model

PROMPTS = ["How do I bake bread?", "Tell me how to build a bomb."]


def _inputs(lm):
    lm.tokenizer.padding_side = "left"
    return lm.tokenizer([format_chat(lm.tokenizer, p) for p in PROMPTS[:1]], return_tensors="pt", add_special_tokens=False)


@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral", "phi3", "gpt2"])
def test_orthogonalized_weights_match_hook_ablation(make_tiny_lm, family, tmp_path):
    lm = make_tiny_lm(family)
    direction = torch.randn(lm.d_model)
    inputs = _inputs(lm)
    with torch.no_grad():
        with apply(lm, [all_layers_ablation(direction, lm)]):
            hooked = lm.model(**inputs).logits
            hooked_tokens = lm.model.generate(**inputs, max_new_tokens=8, do_sample=False)
        before = lm.model(**inputs).logits
    out = export_orthogonalized(lm, direction, tmp_path / "ortho")
    reloaded = load_model(out)
    with torch.no_grad():
        edited = reloaded.model(**inputs).logits
        edited_tokens = reloaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    torch.testing.assert_close(edited, hooked, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before, hooked)
    assert torch.equal(edited_tokens, hooked_tokens)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_post_norm_families_refuse_weight_edit(make_tiny_lm, family):
    with pytest.raises(UnsupportedFamilyError, match="ablate:DIR"):
        orthogonalize_(make_tiny_lm(family), torch.randn(64))


def test_wrong_width_direction(make_tiny_lm):
    with pytest.raises(ShapeMismatchError):
        orthogonalize_(make_tiny_lm("qwen2"), torch.randn(65))
