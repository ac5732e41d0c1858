"""Save and load SAEs: our layout, SAELens's layout and Gemma Scope's ``params.npz``.

* **Ours**: ``cfg.json`` (``SaeConfig.to_dict()`` plus ``"format": "refusal_steer.sae/1"``) and
  ``sae_weights.safetensors`` (the module's state: ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``,
  ``norm_scale`` and kind-specific tensors such as ``threshold``).
* **SAELens** (v6): ``cfg.json`` with ``architecture`` (``standard``/``topk``/``jumprelu``), ``d_in``,
  ``d_sae``, ``dtype``, ``apply_b_dec_to_input``, ``normalize_activations``, ``metadata``
  (``sae_lens_version``, ``hook_name`` such as ``blocks.L.hook_resid_pre``, ``model_name``) and the
  same weight names. Our input scale is folded into the weights on export, so the file needs no
  normalisation at run time; BatchTopK exports as JumpReLU with its threshold on every latent (what
  SAELens does for its own BatchTopK). A TopK file with ``rescale_acts_by_decoder_norm: true`` (what
  SAELens's ``save_inference_model`` writes by default) loads with the decoder norms folded in.
* **SAELens before 6.0** (no ``metadata.sae_lens_version``): ``hook_point`` or top-level
  ``hook_name``, ``activation_fn_str`` (``relu``, or ``topk`` with ``activation_fn_kwargs.k``) and
  possibly no ``architecture``, read the way SAELens 6.54's ``handle_pre_6_0_config`` reads them.
* **Gemma Scope**: ``params.npz`` with ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``
  (JumpReLU ``ReLU(z) * H(z - threshold)``, no ``b_dec`` subtraction on input, threshold kept in
  float32).

Only safetensors, npz (``allow_pickle=False``) and JSON are read: never pickle.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..atomic import atomic_save_safetensors, atomic_write_text
from ..errors import ConfigError, CorruptFileError, ShapeMismatchError
from . import registry
from .base import Sae
from .config import DTYPES, SaeConfig
from .constants import CFG_FILENAME, FORMAT_TAG, GEMMA_SCOPE_FILENAME, TRAINING_FILENAME, WEIGHTS_FILENAME

logger = logging.getLogger(__name__)

_SITE_TO_SAELENS = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
_SAELENS_TO_SITE = {v: k for k, v in _SITE_TO_SAELENS.items()}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_[a-z_]+)$")
# Our arch -> SAELens inference architecture.
_TO_SAELENS_ARCH = {"relu_l1": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
_FROM_SAELENS_ARCH = {"standard": "relu_l1", "topk": "topk", "jumprelu": "jumprelu"}


# --------------------------------------------------------------------------- hook names
def point_to_hook_name(point: str) -> str:
    """Our hook point -> SAELens/TransformerLens hook name.

    Example:
        >>> point_to_hook_name("resid_pre.12")
        'blocks.12.hook_resid_pre'
    """
    site, _, layer = point.partition(".")
    if site not in _SITE_TO_SAELENS or not layer.isdigit():
        raise ConfigError(f"hook point {point!r} has no SAELens name", fix=f"use one of {sorted(_SITE_TO_SAELENS)} followed by .LAYER")
    return f"blocks.{int(layer)}.{_SITE_TO_SAELENS[site]}"


def hook_name_to_point(hook_name: str) -> str:
    """SAELens/TransformerLens hook name -> our hook point.

    Example:
        >>> hook_name_to_point("blocks.12.hook_resid_post")
        'resid_post.12'
    """
    m = _HOOK_RE.match(hook_name)
    if not m or m.group(2) not in _SAELENS_TO_SITE:
        raise ConfigError(
            f"SAELens hook name {hook_name!r} has no refusal-steer hook point",
            fix=f"supported: blocks.L.{{{','.join(sorted(_SAELENS_TO_SITE))}}}",
        )
    return f"{_SAELENS_TO_SITE[m.group(2)]}.{int(m.group(1))}"


# --------------------------------------------------------------------------- low-level helpers
def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning parse errors into :class:`CorruptFileError`."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc})", fix="re-save or re-download the SAE") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} does not hold a JSON object", fix="re-save or re-download the SAE")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Read a safetensors file, turning parse errors into :class:`CorruptFileError`."""
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing", fix="the SAE directory is incomplete; re-save or re-download it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({exc})", fix="re-save or re-download the SAE") from exc


def _load_weights_into(sae: Sae, tensors: dict[str, Tensor], source: Path) -> Sae:
    state = sae.state_dict()
    missing = sorted(set(state) - set(tensors))
    if missing:
        raise CorruptFileError(f"{source} lacks tensor(s) {', '.join(missing)}", fix="re-save or re-download the SAE")
    for name, t in tensors.items():
        if name not in state:
            continue
        if tuple(t.shape) != tuple(state[name].shape):
            raise ShapeMismatchError(
                f"{source}: tensor '{name}' has shape {tuple(t.shape)} but its config implies {tuple(state[name].shape)}",
                fix="cfg.json and the weights disagree (d_in/d_sae); re-save the SAE",
            )
    with torch.no_grad():
        for name, dst in state.items():
            dst.copy_(tensors[name].to(dst.dtype))
    return sae


# --------------------------------------------------------------------------- our layout
def save_sae(sae: Sae, path: str | os.PathLike[str]) -> Path:
    """Save in our layout (``cfg.json`` + ``sae_weights.safetensors``), each file written atomically.

    Args:
        sae: the SAE.
        path: directory (created if missing).

    Returns:
        The directory.

    Example:
        >>> import tempfile
        >>> from refusal_steer.sae import build_sae, load_sae
        >>> from refusal_steer.sae.topk import TopKConfig
        >>> d = save_sae(build_sae(TopKConfig(d_in=8, d_sae=16, k=2)), tempfile.mkdtemp())
        >>> load_sae(d).cfg.k
        2
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(sae.state_dict(), out / WEIGHTS_FILENAME, metadata={"format": FORMAT_TAG})
    atomic_write_text(out / CFG_FILENAME, json.dumps({"format": FORMAT_TAG, **sae.cfg.to_dict()}, indent=2))
    return out


def _load_ours(d: Path, cfg_dict: dict[str, Any]) -> Sae:
    cfg = registry.config_from_dict(cfg_dict)
    sae = registry.build(cfg)
    return _load_weights_into(sae, read_safetensors(d / WEIGHTS_FILENAME), d / WEIGHTS_FILENAME)


# --------------------------------------------------------------------------- SAELens layout
#: ``metadata.sae_lens_version`` that :func:`save_saelens` writes: the first SAELens release whose
#: layout the file follows. SAELens 6 reads ``metadata`` only when the version is >= 6.0; without one
#: it parses the file as pre-6.0 and takes ``hook_name`` and ``model_name`` from the top level.
SAELENS_LAYOUT_VERSION = "6.0.0"
#: Pre-6.0 top-level names -> 6.x names, as SAELens 6.54's ``handle_pre_6_0_config`` renames them.
_PRE6_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "activation_fn_str": "activation_fn"}
#: Keys only a SAELens cfg.json has: 6.x's ``architecture`` and ``metadata``, pre-6.0's hook and activation names.
_SAELENS_MARKERS = ("architecture", "metadata", "sae_lens_version", "hook_name", "hook_point", "activation_fn_str", "activation_fn")


def _folded_tensors(sae: Sae) -> dict[str, Tensor]:
    """Weights with ``norm_scale`` folded in: same pre-activations, raw-unit input and output."""
    s = sae.norm_scale.to(torch.float64)
    W_enc = (sae.W_enc.detach().double() * s).to(sae.W_enc.dtype)  # noqa: N806
    W_dec = (sae.W_dec.detach().double() / s).to(sae.W_dec.dtype)  # noqa: N806
    b_dec = (sae.b_dec.detach().double() / s).to(sae.b_dec.dtype)
    out = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": sae.b_enc.detach().clone(), "b_dec": b_dec}
    if sae.cfg.arch == "jumprelu":
        out["threshold"] = sae.threshold.detach().float().clone()  # type: ignore[union-attr]
    elif sae.cfg.arch == "batchtopk":
        thr = max(float(sae.threshold), 0.0)  # type: ignore[arg-type]
        out["threshold"] = torch.full((sae.cfg.d_sae,), thr, dtype=torch.float32)
    return out


def _saelens_metadata(cfg: SaeConfig) -> dict[str, Any]:
    """``metadata`` as SAELens 6 reads it (``SAEMetadata``): layout version, model and hook, unknowns null.

    Without ``sae_lens_version`` SAELens 6 takes the file for pre-6.0 and loses ``hook_name`` and
    ``model_name``; ``model_from_pretrained_kwargs`` is ``{}`` because SAELens splats it.
    """
    return {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": None,
        "model_name": cfg.model,
        "hook_name": point_to_hook_name(cfg.point) if cfg.point is not None else None,
        "hook_head_index": None,
        "model_from_pretrained_kwargs": {},
    }


def save_saelens(sae: Sae, path: str | os.PathLike[str]) -> Path:
    """Save in SAELens v6's layout, loadable by ``sae_lens.SAE.load_from_disk``.

    The input scale is folded into the weights (``normalize_activations: "none"``), and ``metadata``
    carries what SAELens 6 reads (:data:`SAELENS_LAYOUT_VERSION`, ``hook_name``, ``model_name``).

    Example:
        >>> import tempfile
        >>> from refusal_steer.sae import build_sae, load_sae
        >>> from refusal_steer.sae.topk import TopKConfig
        >>> d = save_saelens(build_sae(TopKConfig(d_in=8, d_sae=16, k=2, point="resid_pre.3")), tempfile.mkdtemp())
        >>> json.loads((d / "cfg.json").read_text())["metadata"]["hook_name"]
        'blocks.3.hook_resid_pre'
    """
    cfg = sae.cfg
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    arch = _TO_SAELENS_ARCH[cfg.arch]
    body: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": _saelens_metadata(cfg),
    }
    if arch == "topk":
        body["k"] = cfg.k  # type: ignore[attr-defined]
        body["rescale_acts_by_decoder_norm"] = False
    body["architecture"] = arch
    atomic_save_safetensors(_folded_tensors(sae), out / WEIGHTS_FILENAME)
    atomic_write_text(out / CFG_FILENAME, json.dumps(body, indent=2))
    return out


def _saelens_major_version(raw: dict[str, Any]) -> int | None:
    """Major version in ``sae_lens_version`` (top level or ``metadata``), None when absent or unreadable."""
    meta = raw.get("metadata")
    version = raw.get("sae_lens_version") or (meta.get("sae_lens_version") if isinstance(meta, dict) else None)
    m = re.match(r"\s*(\d+)", version) if isinstance(version, str) else None
    return int(m.group(1)) if m else None


def _pre6_architecture(view: dict[str, Any], source: Path) -> tuple[str, int | None]:
    """Architecture and TopK ``k`` of a pre-6.0 config, read from ``architecture`` and ``activation_fn``.

    As SAELens 6.54's ``handle_pre_6_0_config``: ``activation_fn: "topk"`` with ``activation_fn_kwargs.k``
    is a TopK SAE; otherwise ``architecture`` (default ``standard``) with a ReLU. Other activation
    functions (``tanh-relu``) are refused rather than loaded as ReLU, which SAELens 6 silently does.
    """
    act = view.get("activation_fn") or "relu"
    if act == "topk":
        k = (view.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise CorruptFileError(
                f"{source} sets activation_fn 'topk' but no activation_fn_kwargs.k",
                fix='add "activation_fn_kwargs": {"k": K} with the SAE\'s k',
            )
        return "topk", k
    if act != "relu":
        raise ConfigError(
            f"{source}: SAELens activation_fn {act!r} is not supported",
            fix="supported pre-6.0 activation functions: relu, topk (with activation_fn_kwargs.k)",
        )
    return view.get("architecture") or "standard", None


def _saelens_view(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """A SAELens cfg.json as SAELens 6 reads it: 6.x names, ``architecture``, ``k`` and a ``metadata`` dict.

    A file without ``sae_lens_version`` >= 6 is pre-6.0 and is renamed and defaulted as SAELens 6.54's
    ``handle_pre_6_0_config`` does: ``hook_point`` -> ``hook_name``, ``activation_fn_str`` ->
    ``activation_fn`` (see :func:`_pre6_architecture`), top-level ``hook_name``/``model_name`` ->
    ``metadata``, a boolean ``normalize_activations`` -> ``"none"``/``"expected_average_only_in"``.
    """
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    major = _saelens_major_version(raw)
    if major is not None and major >= 6:
        return {**raw, "metadata": meta}
    view = {_PRE6_RENAMES.get(k, k): v for k, v in raw.items()}
    # SAELens 6 reads only the top level here; a metadata block (our exports before 6.0 metadata) fills the gaps.
    view["metadata"] = {**meta, **{k: view[k] for k in ("model_name", "hook_name") if view.get(k) is not None}}
    view["architecture"], k = _pre6_architecture(view, source)
    if k is not None:
        view["k"] = k
    if isinstance(view.get("normalize_activations"), bool):
        view["normalize_activations"] = "expected_average_only_in" if view["normalize_activations"] else "none"
    return view


def _check_saelens_normalization(view: dict[str, Any], d: Path) -> None:
    """Refuse input normalisations that are not a foldable scale; warn when the scale is not stored."""
    norm = view.get("normalize_activations") or "none"
    if norm == "expected_average_only_in":
        logger.warning("%s: normalize_activations=expected_average_only_in but no scale is stored; loading unscaled", d)
    elif norm != "none":
        raise ConfigError(f"SAELens normalize_activations={norm!r} is not supported", fix="use an SAE saved with normalize_activations='none'")


def _saelens_point(hook_name: Any, d: Path) -> str | None:
    """Our hook point for a SAELens ``hook_name``; None (with a warning) when it has none."""
    if not hook_name:
        return None
    try:
        return hook_name_to_point(str(hook_name))
    except ConfigError:
        logger.warning("%s: hook name %r has no refusal-steer point; set it yourself", d, hook_name)
        return None


def _saelens_fields(view: dict[str, Any], d: Path) -> dict[str, Any]:
    """Our config fields from a SAELens config view: widths, point, model, dtype, b_dec convention, TopK's k."""
    source = d / CFG_FILENAME
    try:
        d_in, d_sae = int(view["d_in"]), int(view["d_sae"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{source} lacks integer d_in/d_sae", fix="re-save or re-download the SAE") from exc
    meta = view["metadata"]
    dtype = str(view.get("dtype", "float32")).removeprefix("torch.")
    fields: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "point": _saelens_point(meta.get("hook_name") or view.get("hook_name"), d),
        "model": meta.get("model_name") or view.get("model_name"),
        "normalize": "none",
        "apply_b_dec_to_input": bool(view.get("apply_b_dec_to_input", True)),
        "dtype": dtype if dtype in DTYPES else "float32",
    }
    if view["architecture"] == "topk":
        try:
            fields["k"] = int(view["k"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(
                f"{source} is a SAELens TopK SAE without an integer k", fix='add "k": K (active latents per token) to cfg.json'
            ) from exc
    return fields


def _finetuning_scale(tensors: dict[str, Tensor], view: dict[str, Any], source: Path) -> Tensor | None:
    """Pre-6.0 SAELens's ``scaling_factor`` (latents times it before decoding), or None when absent or all ones.

    As SAELens 6's ``read_sae_components_from_disk``: an all-ones one is dropped, and one the config
    does not enable (``finetuning_scaling_factor``) is an inconsistent file.
    """
    scale = tensors.pop("scaling_factor", None)
    if scale is None or bool(torch.all(scale == 1)):
        return None
    if not view.get("finetuning_scaling_factor"):
        raise CorruptFileError(
            f"{source} holds a scaling_factor that is not all ones but cfg.json sets finetuning_scaling_factor false",
            fix="set finetuning_scaling_factor true in cfg.json if the scale applies, or remove the tensor",
        )
    return scale


@torch.no_grad()
def _fold_scale_into_decoder(sae: Sae, scale: Tensor, source: Path) -> None:
    """``decode(f * scale) == decode'(f)`` with ``W_dec'_i = scale_i * W_dec_i`` (SAELens < 6 ``apply_finetuning_scaling_factor``)."""
    if tuple(scale.shape) != (sae.cfg.d_sae,):
        raise ShapeMismatchError(
            f"{source}: scaling_factor has shape {tuple(scale.shape)}, expected ({sae.cfg.d_sae},)", fix="re-save or re-download the SAE"
        )
    sae.W_dec.copy_(sae.W_dec.double() * scale.double()[:, None])


@torch.no_grad()
def _fold_decoder_norms(sae: Sae) -> None:
    """Fold each decoder row's norm into the encoder, in place, as SAELens's ``fold_W_dec_norm``.

    A SAELens TopK SAE with ``rescale_acts_by_decoder_norm`` multiplies pre-activations by the row
    norms ``n`` before the top-k and divides the latents by ``n`` before decoding. With
    ``W_dec_i / n_i``, ``W_enc[:, i] * n_i`` and ``b_enc_i * n_i`` a plain TopK computes the same
    latents and reconstruction. ``save_inference_model`` has already folded them (unit rows: a no-op
    here up to rounding) but still writes the flag; ``save_model`` of an inference SAE has not.
    """
    n = sae.W_dec.double().norm(dim=-1).clamp_min(1e-8)  # SAELens's get_W_dec_norm clamps the same way
    sae.W_dec.copy_(sae.W_dec.double() / n[:, None])
    sae.W_enc.copy_(sae.W_enc.double() * n)
    sae.b_enc.copy_(sae.b_enc.double() * n)


def _load_saelens(d: Path, raw: dict[str, Any]) -> Sae:
    """Load a SAELens folder of any version (see :func:`_saelens_view`) as one of our SAEs."""
    source = d / CFG_FILENAME
    view = _saelens_view(raw, source)
    arch_name = view.get("architecture")
    if arch_name not in _FROM_SAELENS_ARCH:
        raise ConfigError(
            f"SAELens architecture {arch_name!r} is not supported",
            fix=f"supported SAELens architectures: {', '.join(_FROM_SAELENS_ARCH)}",
        )
    _check_saelens_normalization(view, d)
    cfg = registry.get(_FROM_SAELENS_ARCH[arch_name])[1](**_saelens_fields(view, d))
    tensors = read_safetensors(d / WEIGHTS_FILENAME)
    scale = _finetuning_scale(tensors, view, d / WEIGHTS_FILENAME)
    tensors["norm_scale"] = torch.ones((), dtype=torch.float32)
    sae = _load_weights_into(registry.build(cfg), tensors, d / WEIGHTS_FILENAME)
    if scale is not None:
        _fold_scale_into_decoder(sae, scale, d / WEIGHTS_FILENAME)
    if cfg.arch == "topk" and view.get("rescale_acts_by_decoder_norm"):
        _fold_decoder_norms(sae)
    return sae


# --------------------------------------------------------------------------- Gemma Scope
def load_gemma_scope(path: str | os.PathLike[str], point: str | None = None, model: str | None = None) -> Sae:
    """Load a Gemma Scope ``params.npz`` as a JumpReLU SAE (threshold kept in float32).

    Gemma Scope encodes ``x @ W_enc + b_enc`` without subtracting ``b_dec``.

    Args:
        path: the ``params.npz`` file or a directory holding it.
        point: our hook point for it, e.g. ``resid_post.12`` (the file does not record it).
        model: model id for the config (informational).
    """
    p = Path(path)
    if p.is_dir():
        p = p / GEMMA_SCOPE_FILENAME
    if not p.is_file():
        raise CorruptFileError(f"{p} is missing", fix="point at a Gemma Scope params.npz")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CorruptFileError(f"{p} is not a readable npz file ({exc})", fix="re-download the Gemma Scope params.npz") from exc
    need = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise CorruptFileError(f"{p} lacks array(s) {', '.join(missing)}", fix="expected Gemma Scope keys W_enc, W_dec, b_enc, b_dec, threshold")
    if arrays["W_enc"].ndim != 2:
        raise ShapeMismatchError(f"{p}: W_enc has shape {arrays['W_enc'].shape}, expected (d_in, d_sae)")
    d_in, d_sae = (int(s) for s in arrays["W_enc"].shape)
    dtype = {np.dtype("float32"): "float32", np.dtype("float16"): "float16"}.get(arrays["W_enc"].dtype, "float32")
    cfg = registry.get("jumprelu")[1](d_in=d_in, d_sae=d_sae, point=point, model=model, normalize="none", apply_b_dec_to_input=False, dtype=dtype)
    sae = registry.build(cfg)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in need}
    tensors["threshold"] = tensors["threshold"].float()
    tensors["norm_scale"] = torch.ones((), dtype=torch.float32)
    return _load_weights_into(sae, tensors, p)


# --------------------------------------------------------------------------- dispatch
def detect_format(path: str | os.PathLike[str]) -> str:
    """``"refusal_steer"``, ``"saelens"`` (any SAELens version) or ``"gemma_scope"`` for an SAE file or directory."""
    p = Path(path)
    if p.suffix == ".npz" or (p.is_dir() and (p / GEMMA_SCOPE_FILENAME).is_file() and not (p / CFG_FILENAME).is_file()):
        return "gemma_scope"
    if not (p / CFG_FILENAME).is_file():
        raise CorruptFileError(f"{p} holds no SAE ({CFG_FILENAME} or {GEMMA_SCOPE_FILENAME} missing)", fix="point at a directory saved by 'sae train' or SAELens")
    raw = read_json(p / CFG_FILENAME)
    if raw.get("format") == FORMAT_TAG or "arch" in raw:
        return "refusal_steer"
    if "architecture" in raw or ("d_in" in raw and "d_sae" in raw and any(k in raw for k in _SAELENS_MARKERS)):
        return "saelens"
    raise CorruptFileError(
        f"{p / CFG_FILENAME} is neither our format nor SAELens's (no 'arch', no 'architecture', no d_in/d_sae with hook_name or hook_point)",
        fix="re-save the SAE with 'sae train' or SAELens",
    )


def _resolve(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or a shipped SAE's folder when ``path`` does not exist but names one."""
    p = Path(path)
    if not p.exists():
        from .pretrained import shipped_path

        p = shipped_path(str(path)) or p
    return p


def load_sae(
    path: str | os.PathLike[str], *, d_model: int | None = None, device: str | torch.device = "cpu", point: str | None = None
) -> Sae:
    """Load an SAE from our layout, SAELens's layout or a Gemma Scope ``params.npz`` (detected).

    Args:
        path: SAE directory or ``.npz`` file, or the name of a shipped SAE (``"default"``, see
            :mod:`refusal_steer.sae.pretrained`) when no such path exists.
        d_model: when given, the SAE's ``d_in`` must equal it (else :class:`ShapeMismatchError`).
        device: where to put the weights.
        point: hook point to record for formats that do not store one (Gemma Scope).

    Returns:
        The SAE in eval mode, in float32 (bf16-shipped weights are upcast).
    """
    p = _resolve(path)
    fmt = detect_format(p)
    if fmt == "gemma_scope":
        sae = load_gemma_scope(p, point=point)
    elif fmt == "saelens":
        sae = _load_saelens(p, read_json(p / CFG_FILENAME))
    else:
        sae = _load_ours(p, read_json(p / CFG_FILENAME))
    if point is not None and sae.cfg.point is None:
        sae.cfg = sae.cfg.replace(point=point)
    check_width(sae, d_model, source=str(p))
    sae = sae.to(device).eval()
    # What loads it again: a shipped SAE's name, else the absolute folder (steer files and fingerprints refer to it).
    sae.source = str(path) if not Path(path).exists() else str(p.resolve())
    return sae


def check_width(sae: Sae, d_model: int | None, source: str = "the SAE") -> None:
    """Raise :class:`ShapeMismatchError` when ``sae.cfg.d_in`` differs from the model's width."""
    if d_model is not None and sae.cfg.d_in != d_model:
        raise ShapeMismatchError(
            f"{source} reads activations of width d_in={sae.cfg.d_in} but the model's d_model is {d_model}",
            fix="use an SAE trained on this model (sae info DIR shows its model and point)",
        )


def sae_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a saved SAE (or a shipped one, by name): format, architecture, widths, point, model, sizes, training record."""
    p = _resolve(path)
    fmt = detect_format(p)
    sae = load_sae(p)
    info: dict[str, Any] = {"path": str(p), "format": fmt, **sae.cfg.to_dict()}
    info["n_parameters"] = sum(t.numel() for t in sae.parameters())
    info["norm_scale"] = float(sae.norm_scale)
    if hasattr(sae, "threshold") and sae.threshold.numel() == 1:  # type: ignore[union-attr]
        info["threshold"] = float(sae.threshold)  # type: ignore[arg-type]
    files = [p] if p.is_file() else [f for f in p.iterdir() if f.is_file()]
    info["size_bytes"] = sum(f.stat().st_size for f in files)
    if p.is_dir() and (p / TRAINING_FILENAME).is_file():
        info["training"] = read_json(p / TRAINING_FILENAME)
    return info


__all__ = [
    "save_sae",
    "load_sae",
    "save_saelens",
    "load_gemma_scope",
    "detect_format",
    "check_width",
    "sae_info",
    "point_to_hook_name",
    "hook_name_to_point",
    "SAELENS_LAYOUT_VERSION",
    "read_json",
    "read_safetensors",
]
