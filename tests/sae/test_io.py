"""Formats: our layout, SAELens's layout, Gemma Scope's params.npz; corrupt files and wrong widths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refusal_steer.errors import ConfigError, CorruptFileError, ShapeMismatchError
from refusal_steer.sae import build_sae, detect_format, hook_name_to_point, load_sae, point_to_hook_name, sae_info, save_sae, save_saelens
from refusal_steer.sae.constants import CFG_FILENAME, WEIGHTS_FILENAME

from .conftest import D_IN, D_SAE, build_cfg, synthetic


def _trained_like(arch: str, **kw):
    sae = build_sae(build_cfg(arch, point="resid_pre.3", model="tiny", **kw))
    sae.initialize_from_data(synthetic(512))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.01 * torch.randn_like(p))
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
        if arch == "jumprelu":
            sae.threshold.uniform_(0.05, 0.5)
    return sae


def test_roundtrip_ours_identical(arch: str, tmp_path: Path) -> None:
    sae = _trained_like(arch)
    save_sae(sae, tmp_path)
    assert detect_format(tmp_path) == "refusal_steer"
    loaded = load_sae(tmp_path)
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    x = synthetic(64, seed=5)
    assert torch.equal(loaded(x).x_hat, sae(x).x_hat)
    assert torch.equal(loaded.encode(x), sae.encode(x))


@pytest.mark.parametrize("unit_scale", [True, False])
def test_roundtrip_saelens_layout(arch: str, unit_scale: bool, tmp_path: Path) -> None:
    sae = _trained_like(arch)
    if unit_scale:
        sae.norm_scale.fill_(1.0)
    save_saelens(sae, tmp_path)
    raw = json.loads((tmp_path / CFG_FILENAME).read_text())
    assert raw["architecture"] == {"relu_l1": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}[arch]
    assert raw["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    assert raw["d_in"] == D_IN and raw["d_sae"] == D_SAE and raw["normalize_activations"] == "none"
    assert detect_format(tmp_path) == "saelens"
    loaded = load_sae(tmp_path)
    assert loaded.cfg.point == "resid_pre.3" and loaded.cfg.model == "tiny"
    x = synthetic(64, seed=5)
    if unit_scale:  # nothing folded: bit-identical
        assert torch.equal(loaded(x).x_hat, sae(x).x_hat)
        assert torch.equal(loaded.encode(x), sae.encode(x))
    else:  # the input scale is folded into the weights: equal up to rounding
        assert torch.allclose(loaded(x).x_hat, sae(x).x_hat, atol=1e-4, rtol=1e-5)
        assert torch.equal(loaded.encode(x) != 0, sae.encode(x) != 0)
    # and back to our layout
    save_sae(loaded, tmp_path / "ours")
    assert torch.equal(load_sae(tmp_path / "ours")(x).x_hat, loaded(x).x_hat)


def test_saelens_library_loads_our_export(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    sae = _trained_like("topk")
    save_saelens(sae, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    x = synthetic(32, seed=5)
    assert torch.allclose(theirs(x), sae(x).x_hat, atol=1e-4)


def test_hook_name_mapping() -> None:
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        assert hook_name_to_point(point_to_hook_name(f"{site}.7")) == f"{site}.7"
    assert point_to_hook_name("resid_post.12") == "blocks.12.hook_resid_post"
    with pytest.raises(ConfigError):
        hook_name_to_point("blocks.3.attn.hook_z")
    with pytest.raises(ConfigError):
        point_to_hook_name("head_out.3.1")


def _gemma_scope_npz(path: Path, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "W_enc": rng.normal(size=(D_IN, D_SAE)).astype(dtype),
        "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(dtype),
        "b_enc": rng.normal(size=(D_SAE,)).astype(dtype),
        "b_dec": rng.normal(size=(D_IN,)).astype(dtype),
        "threshold": rng.uniform(0.5, 2.0, size=(D_SAE,)).astype(np.float32),
    }
    np.savez(path, **arrays)
    return arrays


def test_gemma_scope_npz_matches_hand_computed_jumprelu(tmp_path: Path) -> None:
    arrays = _gemma_scope_npz(tmp_path / "params.npz")
    sae = load_sae(tmp_path / "params.npz", point="resid_post.5")
    assert sae.cfg.arch == "jumprelu" and sae.cfg.point == "resid_post.5" and not sae.cfg.apply_b_dec_to_input
    assert sae.threshold.dtype == torch.float32
    x = np.random.default_rng(1).normal(size=(10, D_IN)).astype(np.float32)
    pre = x @ arrays["W_enc"] + arrays["b_enc"]
    acts = np.where(pre > arrays["threshold"], pre, 0.0)
    expected = acts @ arrays["W_dec"] + arrays["b_dec"]
    out = sae(torch.from_numpy(x))
    assert np.allclose(out.latents.detach().numpy(), acts, atol=1e-5)
    assert np.allclose(out.x_hat.detach().numpy(), expected, atol=1e-4)
    assert detect_format(tmp_path) == "gemma_scope"  # a directory holding params.npz also works
    assert torch.equal(load_sae(tmp_path)(torch.from_numpy(x)).x_hat, out.x_hat)


def test_gemma_scope_float16_keeps_threshold_float32(tmp_path: Path) -> None:
    _gemma_scope_npz(tmp_path / "params.npz", dtype=np.float16)
    sae = load_sae(tmp_path / "params.npz")
    assert sae.W_enc.dtype == torch.float16 and sae.threshold.dtype == torch.float32


def test_pickled_npz_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "params.npz", W_enc=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(CorruptFileError):
        load_sae(tmp_path / "params.npz")


def test_garbage_npz_and_missing_keys(tmp_path: Path) -> None:
    (tmp_path / "params.npz").write_bytes(b"not a zip")
    with pytest.raises(CorruptFileError):
        load_sae(tmp_path / "params.npz")
    np.savez(tmp_path / "other.npz", W_enc=np.zeros((2, 3), np.float32))
    with pytest.raises(CorruptFileError, match="lacks"):
        load_sae(tmp_path / "other.npz")


def test_truncated_weights_raise_corrupt_file(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path)
    w = tmp_path / WEIGHTS_FILENAME
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CorruptFileError) as exc:
        load_sae(tmp_path)
    assert exc.value.fix


def test_bad_json_and_unknown_layout(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path)
    (tmp_path / CFG_FILENAME).write_text("{not json")
    with pytest.raises(CorruptFileError):
        load_sae(tmp_path)
    (tmp_path / CFG_FILENAME).write_text('{"hello": 1}')
    with pytest.raises(CorruptFileError):
        load_sae(tmp_path)
    with pytest.raises(CorruptFileError):
        load_sae(tmp_path / "does-not-exist")


def test_wrong_width_errors(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path)
    with pytest.raises(ShapeMismatchError, match="d_model is 32"):
        load_sae(tmp_path, d_model=32)
    load_sae(tmp_path, d_model=D_IN)
    raw = json.loads((tmp_path / CFG_FILENAME).read_text())
    raw["d_sae"] = D_SAE * 2
    (tmp_path / CFG_FILENAME).write_text(json.dumps(raw))
    with pytest.raises(ShapeMismatchError, match="W_enc|W_dec|b_enc"):
        load_sae(tmp_path)


def test_sae_info(tmp_path: Path) -> None:
    save_sae(_trained_like("batchtopk"), tmp_path)
    info = sae_info(tmp_path)
    assert info["format"] == "refusal_steer" and info["arch"] == "batchtopk" and info["d_sae"] == D_SAE
    assert info["threshold"] == pytest.approx(0.3)
