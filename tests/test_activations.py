"""Activation caching: values equal an unpadded forward, every position mode, shards, resume, reader."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_steer.activations import cache_activations, iter_shards, load_activations, read_manifest
from refusal_steer.errors import ConfigError
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import record
from refusal_steer.interventions import Add
from refusal_steer.models import post_instruction

PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea.", "Tell me a joke", "Explain computers."]
POINTS = ["resid_pre.1", "mlp_out.0"]


pytestmark = pytest.mark.usefixtures("one_thread")


SYSTEM = "Explain how a computer works: a processor runs instructions."  # a long common prefix: shared batches


def _unpadded(lm, point, extra=(), system=None):
    """Per prompt, the (seq, d) activation from a plain forward pass of that prompt alone."""
    from refusal_steer.hooks import apply

    out = []
    for tokens in encode_prompts(lm, PROMPTS, system=system):
        with torch.no_grad(), apply(lm, list(extra)), record(lm, [point]) as rec:
            lm.model(torch.tensor([tokens]))
        out.append(rec[point][0])
    return out


@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_all_position_modes_match_unpadded_forward(make_tiny_lm, tmp_path, family, system):
    lm = make_tiny_lm(family)
    reference = {p: _unpadded(lm, p, system=system) for p in POINTS}
    k = post_instruction(lm.tokenizer, system=system).n_positions
    for mode in ("last", "post_instruction", "all", "mean"):
        manifest = cache_activations(lm, PROMPTS, ",".join(POINTS), tmp_path / mode, positions=mode, batch_size=2, shard_size=2,
                                     system=system, progress=False)
        assert manifest["complete"] and len(manifest["shards"]) == 3
        for point in POINTS:
            got = load_activations(tmp_path / mode, point)
            if mode == "last":
                expected = torch.stack([r[-1] for r in reference[point]])
            elif mode == "post_instruction":
                expected = torch.cat([r[-k:] for r in reference[point]])
            elif mode == "all":
                expected = torch.cat(reference[point])
            else:
                expected = torch.stack([r.mean(0) for r in reference[point]])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    _, prompt_index, token_index = next(iter_shards(tmp_path / "all", POINTS[0], with_index=True))
    lengths = [len(t) for t in encode_prompts(lm, PROMPTS[:2], system=system)]
    assert prompt_index.tolist() == [0] * lengths[0] + [1] * lengths[1]
    assert token_index.tolist() == list(range(lengths[0])) + list(range(lengths[1]))


def test_dtype_manifest_and_steer(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("llama")
    steer = [Add(torch.randn(lm.d_model), "resid_pre.0")]
    cache_activations(lm, PROMPTS, ["resid_pre.1"], tmp_path, dtype="bfloat16", interventions=steer, source="unit-test", progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    config = manifest["config"]
    assert config["points"] == ["resid_pre.1"] and config["dtype"] == "bfloat16" and config["n"] == len(PROMPTS)
    assert config["model"] == lm.spec and "source_sha256" in config and config["source"] == "unit-test"
    got = load_activations(tmp_path, "resid_pre.1")
    assert got.dtype == torch.bfloat16 and got.shape == (len(PROMPTS), lm.d_model)
    expected = torch.stack([r[-1] for r in _unpadded(lm, "resid_pre.1", steer)])
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=2e-2)


def test_resume_skips_finished_shards(make_tiny_lm, tmp_path, monkeypatch):
    import refusal_steer.activations as activations

    lm = make_tiny_lm("qwen2")
    real = activations._cache_shard
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(activations, "_cache_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(lm, PROMPTS, "resid_pre.1", tmp_path, shard_size=2, progress=False)
    assert not read_manifest(tmp_path)["complete"] and len(read_manifest(tmp_path)["shards"]) == 2
    with pytest.raises(ConfigError, match="unfinished"):
        load_activations(tmp_path, "resid_pre.1")
    calls.clear()
    monkeypatch.setattr(activations, "_cache_shard", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    cache_activations(lm, PROMPTS, "resid_pre.1", tmp_path, shard_size=2, progress=False)
    assert calls == [range(4, 5)]
    fresh = tmp_path / "fresh"
    cache_activations(lm, PROMPTS, "resid_pre.1", fresh, shard_size=2, progress=False)
    assert torch.equal(load_activations(tmp_path, "resid_pre.1"), load_activations(fresh, "resid_pre.1"))
    assert not list(tmp_path.glob("*.tmp"))


def test_changed_config_and_bad_inputs_are_refused(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    cache_activations(lm, PROMPTS, "resid_pre.1", tmp_path, progress=False)
    with pytest.raises(ConfigError, match="differs in: positions"):
        cache_activations(lm, PROMPTS, "resid_pre.1", tmp_path, positions="mean", progress=False)
    with pytest.raises(ConfigError, match="no activations at"):
        load_activations(tmp_path, "resid_pre.2")
    with pytest.raises(ConfigError, match="unknown positions"):
        cache_activations(lm, PROMPTS, "resid_pre.1", tmp_path / "x", positions="first", progress=False)


def test_forward_stops_after_deepest_point(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2", n_layers=3)
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(lm.layers)]
    cache_activations(lm, PROMPTS[:2], "resid_pre.1", tmp_path, progress=False)
    for handle in handles:
        handle.remove()
    assert set(ran) == {0}
