"""``write_gguf_with_replacements``: a source GGUF copied with some tensors replaced, everything else byte for byte."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from refusal_steer.errors import ConfigError, CorruptFileError, UnsupportedFamilyError
from refusal_steer.models.gguf_export import (
    EDIT_KEY,
    gguf_architecture,
    gguf_tensor_name,
    write_gguf_with_replacements,
)


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _fields(path):
    return {k: (f.types, f.contents()) for k, f in gguf.GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def test_hf_names_map_to_gguf_names():
    assert gguf_tensor_name("qwen2", 24, "model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight"
    assert gguf_tensor_name("llama", 2, "model.layers.1.self_attn.o_proj.weight") == "blk.1.attn_output.weight"
    assert gguf_tensor_name("qwen2", 24, "model.embed_tokens.weight") == "token_embd.weight"


@pytest.mark.parametrize("tensor_type, qtype, atol", [("f32", "F32", 0.0), ("f16", "F16", 1e-3), ("q8_0", "Q8_0", 0.02),
                                                      ("source", "Q8_0", 0.02)])
def test_replaced_tensor_reads_back_and_the_rest_is_untouched(tiny_qwen2_gguf, tmp_path, tensor_type, qtype, atol):
    source = _tensors(tiny_qwen2_gguf)
    name = "blk.1.ffn_down.weight"
    original = gguf.quants.dequantize(source[name].data, source[name].tensor_type)
    new = np.random.default_rng(0).normal(size=original.shape).astype(np.float32) * 0.05
    out = tmp_path / "edited.gguf"
    written = write_gguf_with_replacements(tiny_qwen2_gguf, out, {name: new}, tensor_type=tensor_type,
                                           record={"edit": "test"}, progress=False)
    assert written.replaced == {name: qtype} and written.bytes == out.stat().st_size
    assert not out.with_name(out.name + ".partial").exists()
    edited = _tensors(out)
    assert edited[name].tensor_type.name == qtype
    back = gguf.quants.dequantize(edited[name].data, edited[name].tensor_type)
    np.testing.assert_allclose(back, new, atol=atol, rtol=0)
    assert np.abs(back - original).max() > 0.05  # it really is the new tensor
    assert list(edited) == list(source)
    for other in source:
        if other != name:
            assert edited[other].tensor_type == source[other].tensor_type
            assert np.array_equal(edited[other].data, source[other].data), other
    fields = _fields(out)
    assert json.loads(fields.pop(EDIT_KEY)[1]) == {"edit": "test"}
    assert fields == _fields(tiny_qwen2_gguf)


def test_added_tensor_is_a_byte_copy(tiny_qwen2_gguf, tmp_path):
    source = _tensors(tiny_qwen2_gguf)
    if "output.weight" in source:
        with pytest.raises(ConfigError, match="exists"):
            write_gguf_with_replacements(tiny_qwen2_gguf, tmp_path / "x.gguf", {}, added={"output.weight": "token_embd.weight"},
                                         progress=False)
        return
    written = write_gguf_with_replacements(tiny_qwen2_gguf, tmp_path / "x.gguf", {}, added={"output.weight": "token_embd.weight"},
                                           progress=False)
    edited = _tensors(written.path)
    assert written.added == {"output.weight": "Q8_0"}
    assert np.array_equal(edited["output.weight"].data, source["token_embd.weight"].data)


def test_bad_replacements_get_clear_errors(tiny_qwen2_gguf, tmp_path):
    out = tmp_path / "x.gguf"
    with pytest.raises(ConfigError, match="no tensor"):
        write_gguf_with_replacements(tiny_qwen2_gguf, out, {"blk.99.ffn_down.weight": np.zeros((64, 128))}, progress=False)
    with pytest.raises(ConfigError, match="shape"):
        write_gguf_with_replacements(tiny_qwen2_gguf, out, {"blk.0.ffn_down.weight": np.zeros((128, 64))}, progress=False)
    with pytest.raises(ConfigError, match="tensor type"):
        write_gguf_with_replacements(tiny_qwen2_gguf, out, {}, tensor_type="q4_k", progress=False)  # type: ignore[arg-type]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_unsupported_architecture_and_corrupt_files(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_architecture(path) == "gpt2"
    with pytest.raises(UnsupportedFamilyError, match="convert_hf_to_gguf"):
        write_gguf_with_replacements(path, tmp_path / "out.gguf", {}, progress=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(CorruptFileError):
        gguf_architecture(bad)
