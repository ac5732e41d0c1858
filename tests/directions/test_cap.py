"""Capped-ablation ceilings, file format and selection."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.directions.cap import cap_ceilings, load_cap, save_cap, select_cap
from refusal_steer.directions.diff_in_means import MeanDiffs
from refusal_steer.directions.scores import KlFilter, last_token_logprobs
from refusal_steer.errors import ConfigError, CorruptFileError, ShapeMismatchError
from refusal_steer.hooks import HookPoint


def _diffs(n_layers=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    harmful = torch.randn(2, n_layers, d, generator=g)
    harmless = torch.randn(2, n_layers, d, generator=g)
    return MeanDiffs(diffs=harmful - harmless, harmful_mean=harmful, harmless_mean=harmless, positions=(-2, -1), n_harmful=4, n_harmless=4)


def test_ceilings_are_the_mean_harmless_projection_per_layer():
    diffs = _diffs()
    direction = diffs.candidate(-1, 1)
    unit = direction / direction.norm()
    expected = torch.stack([(diffs.harmless_mean[:, layer] @ unit).mean() for layer in range(3)])
    torch.testing.assert_close(cap_ceilings(diffs, direction), expected)
    torch.testing.assert_close(cap_ceilings(diffs, 3 * direction), expected)  # scale-free


def test_save_load_round_trip_and_errors(tmp_path):
    direction, ceilings = torch.randn(8), torch.tensor([0.1, 0.2, 0.3])
    save_cap(tmp_path, direction, ceilings, HookPoint.parse("resid_pre.1"), position=-1)
    saved = load_cap(tmp_path)
    torch.testing.assert_close(saved.direction, direction)
    assert saved.metadata["point"] == "resid_pre.1" and saved.metadata["position"] == "-1"
    cap = saved.intervention()
    assert [str(p) for p in cap.points] == ["resid_pre.0", "resid_pre.1", "resid_pre.2"]
    assert cap.ceilings == pytest.approx((0.1, 0.2, 0.3))
    with pytest.raises(ConfigError, match="no capped ablation"):
        load_cap(tmp_path / "elsewhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cap.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="cannot read"):
        load_cap(tmp_path / "bad")
    from safetensors.torch import save_file

    save_file({"direction": direction}, str(tmp_path / "half.safetensors"))
    with pytest.raises(CorruptFileError, match="ceilings"):
        load_cap(tmp_path / "half.safetensors")
    save_file({"direction": torch.randn(2, 8), "ceilings": ceilings}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ShapeMismatchError):
        load_cap(tmp_path / "shape.safetensors")


def test_select_cap_picks_the_lowest_bypass_that_passes_kl(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    g = torch.Generator().manual_seed(1)
    harmless = torch.randn(2, lm.n_layers, lm.d_model, generator=g)
    harmful = harmless + 3 * torch.randn(2, lm.n_layers, lm.d_model, generator=g)
    diffs = MeanDiffs(diffs=harmful - harmless, harmful_mean=harmful, harmless_mean=harmless, positions=(-2, -1), n_harmful=4, n_harmless=4)
    harmful_val, harmless_val = ["Tell me something bad.", "Do a bad thing."], ["Write a poem.", "Name a colour."]
    base = last_token_logprobs(lm, harmless_val)
    candidates = [(-1, 0), (-2, 1), (-1, 1)]
    loose = select_cap(lm, diffs, candidates, harmful_val, KlFilter(lm, harmless_val, base, 1e9), [5, 17], progress=False)
    assert [(r["position"], r["layer"]) for r in loose.table] == candidates
    best = min(loose.table, key=lambda r: r["bypass"])
    assert (loose.position, loose.layer) == (best["position"], best["layer"]) and best["status"] == "selected"
    assert sum(r["kl"] is not None for r in loose.table) == 1  # KL only for the winner: it passed first
    strict = select_cap(lm, diffs, candidates, harmful_val, KlFilter(lm, harmless_val, base, -1.0), [5, 17], progress=False)
    assert strict.layer is None and all(r["status"] == "filtered: kl" for r in strict.table)
    assert strict.to_json()["point"] is None
