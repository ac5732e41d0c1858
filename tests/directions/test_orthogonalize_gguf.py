"""Orthogonalised weights written as a GGUF: read back with transformers' GGUF loader, they match hook ablation."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from refusal_steer.directions.orthogonalize import ORTHOGONALIZED_GGUF, ORTHOGONALIZED_RECORD, export_orthogonalized
from refusal_steer.errors import UnsupportedFamilyError
from refusal_steer.generation import encode_prompts, left_pad, position_ids
from refusal_steer.hooks import apply
from refusal_steer.interventions import all_layers_ablation
from refusal_steer.models import load_model

PROMPTS = ["How do I bake bread?", "Tell me how to build a bomb."]

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(lm):
    batch = left_pad(encode_prompts(lm, PROMPTS), lm.tokenizer.pad_token_id)
    batch["position_ids"] = position_ids(batch["attention_mask"])
    return batch


def _direction(lm):
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(5))
    return direction / direction.norm()


@pytest.mark.parametrize("tensor_type, share", [("f32", 1e-4), ("f16", 0.01), ("q8_0", 0.1)])
def test_gguf_export_matches_hook_ablation(tiny_qwen2_gguf, tmp_path, tensor_type, share):
    """The exported GGUF's logits differ from hook ablation's by a small ``share`` of what the ablation itself changes."""
    lm = load_model(tiny_qwen2_gguf, cache_dequantised=False)
    direction = _direction(lm)
    batch = _batch(lm)
    with torch.no_grad():
        base = lm.model(**batch).logits[:, -1]
        with apply(lm, [all_layers_ablation(direction, lm)]):
            hooked = lm.model(**batch).logits[:, -1]
    effect = (hooked - base).abs().max().item()
    assert effect > 0.01
    lm_embed = lm.model.get_input_embeddings().weight.detach().numpy().copy()
    out = export_orthogonalized(lm, direction, tmp_path / "ortho", gguf_type=tensor_type)
    record = json.loads((out / ORTHOGONALIZED_RECORD).read_text())
    assert record["gguf"]["file"] == ORTHOGONALIZED_GGUF and record["gguf"]["tensor_type"] == tensor_type
    assert sorted(record["gguf"]["replaced"]) == sorted(["token_embd.weight"] + [f"blk.{i}.{t}.weight" for i in range(3)
                                                                                 for t in ("attn_output", "ffn_down")])
    reader = gguf.GGUFReader(out / ORTHOGONALIZED_GGUF)
    assert json.loads(reader.get_field("refusal_steer.edit").contents())["source_model"] == str(tiny_qwen2_gguf)
    if "output.weight" not in {t.name for t in gguf.GGUFReader(tiny_qwen2_gguf).tensors}:
        assert record["gguf"]["added"] == {"output.weight": "Q8_0"}  # the tied source keeps its original unembedding
    tensors = {t.name: t for t in reader.tensors}
    embed = gguf.quants.dequantize(tensors["token_embd.weight"].data, tensors["token_embd.weight"].tensor_type)
    before = np.abs(lm_embed @ direction.numpy()).max()
    assert np.abs(embed @ direction.numpy()).max() < 3 * share * before  # embedding rows have (almost) no component along r

    reloaded = load_model(out / ORTHOGONALIZED_GGUF, cache_dequantised=False)  # transformers' GGUF loader
    with torch.no_grad():
        edited = reloaded.model(**batch).logits[:, -1]
    error = (edited - hooked).abs().max().item()
    print(f"{tensor_type}: max |GGUF - hooks| = {error:.2e}, ablation effect {effect:.2e}")
    assert error < share * effect


def test_model_not_from_a_gguf(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    with pytest.raises(UnsupportedFamilyError, match="convert_hf_to_gguf"):
        export_orthogonalized(lm, _direction(lm), tmp_path / "a", gguf=True)
    out = export_orthogonalized(make_tiny_lm("qwen2"), _direction(lm), tmp_path / "b")  # auto: a folder only
    assert (out / "config.json").is_file() and not (out / ORTHOGONALIZED_GGUF).exists()
    assert "gguf" not in json.loads((out / ORTHOGONALIZED_RECORD).read_text())


def test_no_gguf_skips_it(tiny_qwen2_gguf, tmp_path):
    lm = load_model(tiny_qwen2_gguf, cache_dequantised=False)
    out = export_orthogonalized(lm, _direction(lm), tmp_path / "c", gguf=False)
    assert not (out / ORTHOGONALIZED_GGUF).exists()
