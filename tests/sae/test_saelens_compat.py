"""SAEs people bring: SAELens 6 and pre-6.0 folders and Gemma Scope files, checked against SAELens's own numbers.

The folders under ``fixtures/saelens/`` were written by SAELens 6.54 (or by hand in its pre-6.0
layouts) and hold SAELens's outputs on a fixed input (``expected.safetensors``); see
``fixtures/make_saelens_fixtures.py``. These tests need no SAELens; the ``live`` ones at the end run
only where ``sae_lens`` imports.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from refusal_steer.errors import ConfigError, CorruptFileError
from refusal_steer.sae import build_sae, detect_format, load_sae, save_saelens
from refusal_steer.sae.base import Sae
from refusal_steer.sae.constants import CFG_FILENAME, WEIGHTS_FILENAME
from refusal_steer.sae.topk import TopKConfig

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
#: Every fixture folder SAELens can load, with what we expect to read from it.
CASES = {
    "standard": {"arch": "relu_l1", "point": "resid_post.2", "apply_b_dec_to_input": True},
    "topk_inference": {"arch": "topk", "point": "resid_pre.6", "k": 4},
    "topk_rescale_unfolded": {"arch": "topk", "point": "resid_pre.6", "k": 4},
    "jumprelu_negative": {"arch": "jumprelu", "point": "mlp_out.1", "apply_b_dec_to_input": True},
    "ours_written": {"arch": "topk", "point": "resid_pre.3", "k": 4},
    "pre6_hook_point_relu": {"arch": "relu_l1", "point": "resid_pre.4", "apply_b_dec_to_input": True},
    "pre6_topk": {"arch": "topk", "point": "resid_post.5", "k": 4},
    "pre6_v5_jumprelu": {"arch": "jumprelu", "point": "resid_post.7", "apply_b_dec_to_input": False},
}


def _expected(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / case / "expected.safetensors"))


def _cfg(case: str) -> dict:
    return json.loads((FIXTURES / case / CFG_FILENAME).read_text())


@torch.no_grad()
def _assert_matches_saelens(sae: Sae, case: str) -> None:
    """encode, decode, forward and a decode of fixed latents equal SAELens's on the fixture input."""
    exp = _expected(case)
    latents = sae.encode(exp["x"])
    assert torch.equal(latents != 0, exp["latents"] != 0), "a different set of latents fires"
    torch.testing.assert_close(latents, exp["latents"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(exp["latents"]), exp["x_hat"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(exp["x"]).x_hat, exp["forward"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(exp["z"]), exp["decode_z"], atol=1e-5, rtol=1e-5)


def _copy_case(case: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / case, tmp_path / case))


def _edit_cfg(d: Path, **changes) -> None:
    raw = json.loads((d / CFG_FILENAME).read_text())
    raw.update(changes)
    (d / CFG_FILENAME).write_text(json.dumps(raw))


@pytest.mark.parametrize("case", sorted(CASES))
def test_saelens_folders_load_with_saelens_numbers(case: str) -> None:
    """Every SAELens folder (6.x and pre-6.0) loads with its architecture, point and model, and computes SAELens's numbers."""
    assert detect_format(FIXTURES / case) == "saelens"
    sae = load_sae(FIXTURES / case)
    want = CASES[case]
    assert sae.cfg.arch == want["arch"] and sae.cfg.point == want["point"] and sae.cfg.model == "tiny-model"
    if "k" in want:
        assert sae.cfg.k == want["k"]  # type: ignore[attr-defined]
    if "apply_b_dec_to_input" in want:
        assert sae.cfg.apply_b_dec_to_input is want["apply_b_dec_to_input"]
    _assert_matches_saelens(sae, case)


# --------------------------------------------------------------------------- case 1: rescale_acts_by_decoder_norm
def test_topk_default_save_inference_model_loads() -> None:
    """SAELens's default TopK output: norms folded by save_inference_model, yet cfg.json still says rescale."""
    assert _cfg("topk_inference")["rescale_acts_by_decoder_norm"] is True
    sae = load_sae(FIXTURES / "topk_inference")
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-5, rtol=0)
    _assert_matches_saelens(sae, "topk_inference")


def test_topk_rescale_with_unfolded_norms_is_folded_as_saelens_does(tmp_path: Path) -> None:
    """Decoder rows of norms 0.2-3 with rescale on: folded at load (W_dec/n, W_enc*n, b_enc*n), same outputs as SAELens."""
    raw = load_file(str(FIXTURES / "topk_rescale_unfolded" / WEIGHTS_FILENAME))
    norms = raw["W_dec"].norm(dim=-1)
    assert _cfg("topk_rescale_unfolded")["rescale_acts_by_decoder_norm"] is True
    assert norms.min() < 0.5 and norms.max() > 2  # folding matters here
    sae = load_sae(FIXTURES / "topk_rescale_unfolded")
    torch.testing.assert_close(sae.W_dec.detach(), raw["W_dec"] / norms[:, None])
    torch.testing.assert_close(sae.W_enc.detach(), raw["W_enc"] * norms)
    torch.testing.assert_close(sae.b_enc.detach(), raw["b_enc"] * norms)
    _assert_matches_saelens(sae, "topk_rescale_unfolded")
    # Ignoring the flag would pick other latents: the fold is what makes the numbers agree.
    plain = _copy_case("topk_rescale_unfolded", tmp_path)
    _edit_cfg(plain, rescale_acts_by_decoder_norm=False)
    exp = _expected("topk_rescale_unfolded")
    assert not torch.equal(load_sae(plain).encode(exp["x"]) != 0, exp["latents"] != 0)


def test_topk_rescale_roundtrips_through_our_export(tmp_path: Path) -> None:
    """A folded SAELens TopK re-exported by us says rescale false and still computes SAELens's numbers."""
    sae = load_sae(FIXTURES / "topk_rescale_unfolded")
    save_saelens(sae, tmp_path)
    assert json.loads((tmp_path / CFG_FILENAME).read_text())["rescale_acts_by_decoder_norm"] is False
    _assert_matches_saelens(load_sae(tmp_path), "topk_rescale_unfolded")


# --------------------------------------------------------------------------- case 2: the metadata SAELens 6 reads
def test_save_saelens_writes_the_metadata_saelens6_reads(tmp_path: Path) -> None:
    """Our cfg.json declares SAELens >= 6 and carries hook_name/model_name where SAELens 6 reads them.

    ``saelens_sees.json`` is what SAELens 6.54 parsed from our export (``SAE.load_from_disk``); without
    ``metadata.sae_lens_version`` it took the file for pre-6.0 and saw hook_name and model_name as None.
    """
    sees = json.loads((FIXTURES / "ours_written" / "saelens_sees.json").read_text())
    assert sees["metadata"]["hook_name"] == "blocks.3.hook_resid_pre" and sees["metadata"]["model_name"] == "tiny-model"
    save_saelens(build_sae(TopKConfig(d_in=16, d_sae=32, k=4, point="resid_pre.3", model="tiny-model")), tmp_path)
    raw = json.loads((tmp_path / CFG_FILENAME).read_text())
    meta = raw["metadata"]
    # SAELens 6's handle_config_defaulting: metadata is read only when sae_lens_version >= 6.0.0.
    version = meta["sae_lens_version"]
    assert isinstance(version, str) and int(re.match(r"\d+", version).group()) >= 6
    for key in ("sae_lens_version", "hook_name", "model_name", "hook_head_index", "model_from_pretrained_kwargs"):
        assert key in meta, key
    assert {k: meta.get(k) for k in sees["metadata"]} == sees["metadata"]
    read = ("architecture", "d_in", "d_sae", "k", "apply_b_dec_to_input", "normalize_activations", "rescale_acts_by_decoder_norm")
    top = {k: raw[k] for k in read}
    assert top == {k: sees[k] for k in top}


def test_unknown_model_and_point_are_written_as_null(tmp_path: Path) -> None:
    save_saelens(build_sae(TopKConfig(d_in=16, d_sae=32, k=4)), tmp_path)
    meta = json.loads((tmp_path / CFG_FILENAME).read_text())["metadata"]
    assert meta["hook_name"] is None and meta["model_name"] is None and meta["sae_lens_version"]
    assert load_sae(tmp_path).cfg.point is None


def test_our_older_exports_still_load_their_point(tmp_path: Path) -> None:
    """Folders our writer made before the version field (metadata without sae_lens_version) keep their point and model."""
    d = _copy_case("ours_written", tmp_path)
    raw = json.loads((d / CFG_FILENAME).read_text())
    raw["metadata"] = {"hook_name": raw["metadata"]["hook_name"], "model_name": raw["metadata"]["model_name"]}
    (d / CFG_FILENAME).write_text(json.dumps(raw))
    sae = load_sae(d)
    assert sae.cfg.point == "resid_pre.3" and sae.cfg.model == "tiny-model"
    _assert_matches_saelens(sae, "ours_written")


# --------------------------------------------------------------------------- case 3: JumpReLU with negative thresholds
@pytest.mark.parametrize("case", ["jumprelu_negative", "gemma_scope_negative"])
def test_jumprelu_negative_thresholds_match_saelens_and_gemma_scope(case: str) -> None:
    """ReLU(z) * H(z - theta): a pre-activation in (theta, 0) gives 0, as in SAELens's JumpReLUSAE and its Gemma Scope loader."""
    path = FIXTURES / case / ("params.npz" if case == "gemma_scope_negative" else "")
    sae = load_sae(path)
    exp = _expected(case)
    with torch.no_grad():
        pre = sae.pre_acts(exp["x"])
    gap = (pre > sae.threshold) & (pre < 0)
    assert gap.sum() >= 5  # entries where pre * H(pre - theta) would be negative: the test is not vacuous
    assert (sae.encode(exp["x"]) >= 0).all()
    _assert_matches_saelens(sae, case)


# --------------------------------------------------------------------------- case 4: pre-6.0 layouts
def test_pre6_hook_point_layout_reads_like_saelens6() -> None:
    raw = _cfg("pre6_hook_point_relu")
    assert "architecture" not in raw and "hook_point" in raw and raw["normalize_activations"] is False
    sae = load_sae(FIXTURES / "pre6_hook_point_relu")
    assert sae.cfg.arch == "relu_l1" and sae.cfg.point == "resid_pre.4" and sae.cfg.dtype == "float32"


def test_pre6_activation_fn_str_topk() -> None:
    raw = _cfg("pre6_topk")
    assert "architecture" not in raw and raw["activation_fn_str"] == "topk"
    sae = load_sae(FIXTURES / "pre6_topk")
    assert sae.cfg.arch == "topk" and sae.cfg.k == 4 and sae.cfg.point == "resid_post.5"  # type: ignore[attr-defined]


def test_pre6_old_activation_fn_key_and_v5_architecture(tmp_path: Path) -> None:
    """The oldest key ``activation_fn`` works like ``activation_fn_str``; topk wins over a v5 ``architecture: standard``."""
    d = _copy_case("pre6_topk", tmp_path)
    raw = json.loads((d / CFG_FILENAME).read_text())
    raw["activation_fn"] = raw.pop("activation_fn_str")
    raw["architecture"] = "standard"
    (d / CFG_FILENAME).write_text(json.dumps(raw))
    _assert_matches_saelens(load_sae(d), "pre6_topk")


def test_pre6_unsupported_activation_is_refused(tmp_path: Path) -> None:
    d = _copy_case("pre6_hook_point_relu", tmp_path)
    _edit_cfg(d, activation_fn_str="tanh-relu")
    with pytest.raises(ConfigError, match="tanh-relu") as exc:
        load_sae(d)
    assert "relu, topk" in exc.value.fix


def test_pre6_topk_without_k_is_refused(tmp_path: Path) -> None:
    d = _copy_case("pre6_topk", tmp_path)
    _edit_cfg(d, activation_fn_kwargs={})
    with pytest.raises(CorruptFileError, match="activation_fn_kwargs.k") as exc:
        load_sae(d)
    assert "activation_fn_kwargs" in exc.value.fix


def test_v6_topk_without_k_is_refused(tmp_path: Path) -> None:
    """SAELens 6 would fall back to its default k=100; we refuse instead."""
    d = _copy_case("topk_inference", tmp_path)
    raw = json.loads((d / CFG_FILENAME).read_text())
    del raw["k"]
    (d / CFG_FILENAME).write_text(json.dumps(raw))
    with pytest.raises(CorruptFileError, match="integer k") as exc:
        load_sae(d)
    assert '"k"' in exc.value.fix


def test_pre6_finetuning_scaling_factor_is_folded_into_the_decoder(tmp_path: Path) -> None:
    """A scaling_factor that is not all ones multiplies the latents before decoding (SAELens < 6's decode)."""
    d = _copy_case("pre6_hook_point_relu", tmp_path)
    tensors = load_file(str(d / WEIGHTS_FILENAME))
    scale = torch.linspace(0.5, 2.0, 32)
    save_file({**tensors, "scaling_factor": scale}, str(d / WEIGHTS_FILENAME))
    with pytest.raises(CorruptFileError, match="finetuning_scaling_factor"):
        load_sae(d)  # the config does not enable it: inconsistent, as SAELens 6 also says
    _edit_cfg(d, finetuning_scaling_factor=True)
    sae = load_sae(d)
    exp = _expected("pre6_hook_point_relu")
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(exp["x"]), exp["latents"], atol=1e-5, rtol=1e-5)  # latents unchanged
        by_hand = (exp["z"] * scale) @ tensors["W_dec"] + tensors["b_dec"]
        torch.testing.assert_close(sae.decode(exp["z"]), by_hand, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"architecture": "gated"}, ConfigError, "gated"),
        ({"normalize_activations": "layer_norm"}, ConfigError, "layer_norm"),
        ({"d_sae": "many"}, CorruptFileError, "d_in/d_sae"),
    ],
)
def test_bad_saelens_configs_name_the_fix(tmp_path: Path, changes: dict, error: type, match: str) -> None:
    d = _copy_case("standard", tmp_path)
    _edit_cfg(d, **changes)
    with pytest.raises(error, match=match) as exc:
        load_sae(d)
    assert exc.value.fix


def test_a_cfg_json_that_is_no_sae_is_still_refused(tmp_path: Path) -> None:
    (tmp_path / CFG_FILENAME).write_text(json.dumps({"d_in": 16, "d_sae": 32}))
    with pytest.raises(CorruptFileError, match="hook_point") as exc:
        load_sae(tmp_path)
    assert exc.value.fix


# --------------------------------------------------------------------------- live, where sae_lens imports
@pytest.mark.parametrize("case", sorted(CASES))
def test_live_saelens_agrees_with_our_load(case: str) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(str(FIXTURES / case))
    ours = load_sae(FIXTURES / case)
    x = _expected(case)["x"]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x).x_hat, theirs(x), atol=1e-5, rtol=1e-5)


def test_live_saelens_sees_our_metadata(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    save_saelens(build_sae(TopKConfig(d_in=16, d_sae=32, k=4, point="resid_post.9", model="some/model")), tmp_path)
    meta = sae_lens.SAE.load_from_disk(str(tmp_path)).cfg.metadata
    assert meta.hook_name == "blocks.9.hook_resid_post" and meta.model_name == "some/model"
