"""Loading from directories and GGUF files, adapter coverage and clear errors."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError, CorruptFileError, ModelNotFoundError, UnsupportedFamilyError
from refusal_steer.models import LoadedModel, adapter_for, load_model, parse_dtype, supported_families
from refusal_steer.pinned import verified

from ..conftest import FAMILIES


def test_every_test_family_has_an_adapter():
    assert sorted(FAMILIES) == supported_families()


def test_unsupported_family_names_the_supported_ones():
    with pytest.raises(UnsupportedFamilyError) as info:
        adapter_for("mamba")
    assert "qwen2" in info.value.fix and "gpt2" in info.value.fix


def test_load_from_local_directory_round_trips(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.info()["family"] == "llama" and loaded.n_layers == 3 and loaded.d_model == 64
    batch = lm.tokenizer(["hello world"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**batch).logits, lm.model(**batch).logits)


def test_dtype_passes_through(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    assert load_model(tmp_path, dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("spec", ["no-such-model", "./missing-dir-xyz"])
def test_unknown_model_is_a_clear_error(spec):
    with pytest.raises(ModelNotFoundError) as info:
        load_model(spec)
    assert info.value.fix


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_corrupt_gguf_is_rejected(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(CorruptFileError, match="not a GGUF"):
        load_model(path)


def test_bad_dtype():
    with pytest.raises(ConfigError, match="dtype"):
        parse_dtype("float13")


def test_hash_stamp_detects_truncation(tmp_path):
    import hashlib

    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 1000)
    digest = hashlib.sha256(b"x" * 1000).hexdigest()
    assert verified(path, digest)
    with open(path, "r+b") as handle:
        handle.truncate(10)
    assert not verified(path, digest)


@pytest.mark.slow
def test_default_model_info():
    lm = load_model("default")
    info = lm.info()
    assert info["family"] == "qwen2" and info["n_layers"] == 24 and info["d_model"] == 896
    assert info["has_chat_template"] and info["head_dim"] == 64


@pytest.mark.slow
def test_smollm2_gguf_fixture_loads():
    lm = load_model("smollm2")
    assert lm.adapter.family == "llama" and lm.d_model == 576
