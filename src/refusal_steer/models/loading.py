"""``load_model``: the pinned default, a local directory, a local ``.gguf`` file or a Hugging Face id.

Never passes ``trust_remote_code``; dtype, device and ``device_map`` go straight to transformers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelNotFoundError, NetworkUnavailableError
from ..pinned import sha256_file
from .default import (
    GGUF_SHA256,
    check_gguf_header,
    default_gguf_path,
    dequantised_dir,
    dequantised_is_complete,
    smollm2_gguf_path,
    write_dequantised,
)
from .loaded import LoadedModel

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "auto": "auto"}


def parse_dtype(dtype: str | torch.dtype | None) -> Any:
    """Map a dtype name to a torch dtype at the edge (None keeps the loader's default)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}", fix=f"use one of {', '.join(_DTYPES)}") from None


def _from_pretrained(source: str | Path, *, dtype: Any, device: str | None, device_map: Any, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs: dict[str, Any] = {"trust_remote_code": False, **kwargs}
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    tokenizer_kwargs = {k: v for k, v in kwargs.items() if k in ("gguf_file", "local_files_only", "revision")}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **tokenizer_kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def _load_gguf(path: Path, sha256: str | None, *, dtype: Any, device: str | None, device_map: Any, cache: bool) -> LoadedModel:
    """Load a GGUF through transformers, reusing a dequantised safetensors copy when one was cached."""
    check_gguf_header(path)
    sha256 = sha256 or sha256_file(path)
    folder = dequantised_dir(path, sha256)
    if cache and dequantised_is_complete(folder, sha256):
        model, tokenizer = _from_pretrained(folder, dtype=dtype or torch.float32, device=device, device_map=device_map)
    else:
        logger.info("dequantising %s (first use; cached afterwards)", path.name)
        model, tokenizer = _from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, device=None, device_map=None)
        if cache and os.access(path.parent, os.W_OK):
            write_dequantised(model, tokenizer, folder, sha256)
        if dtype not in (None, torch.float32, "auto"):
            model = model.to(dtype)
        if device is not None:
            model = model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=str(path), source_sha256=sha256)


def load_model(
    spec: str | Path = "default",
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: Any = None,
    cache_dequantised: bool = True,
) -> LoadedModel:
    """Load a causal LM with its tokenizer and family adapter.

    Args:
        spec: ``"default"`` (the pinned Qwen2.5-Coder-0.5B-Instruct GGUF), ``"smollm2"`` (the pinned
            SmolLM2-135M-Instruct test fixture), a local directory with ``config.json``, a local ``.gguf``
            file, or a Hugging Face id (needs network or a populated HF cache).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a torch dtype.
        device: move the model there after loading (ignored when ``device_map`` is given).
        device_map: passed to transformers/accelerate to spread a large model over devices.
        cache_dequantised: keep a float32 safetensors copy of a GGUF so the next load is fast.

    Returns:
        A :class:`LoadedModel`.

    Example:
        >>> lm = load_model("default")  # doctest: +SKIP
        >>> lm.n_layers, lm.d_model  # doctest: +SKIP
        (24, 896)
    """
    dtype = parse_dtype(dtype)
    text = str(spec)
    if text == "default":
        lm = _load_gguf(default_gguf_path(), GGUF_SHA256, dtype=dtype, device=device, device_map=device_map, cache=cache_dequantised)
        lm.spec = "default"
        return lm
    if text == "smollm2":
        from .default import SMOLLM2_SHA256

        lm = _load_gguf(smollm2_gguf_path(), SMOLLM2_SHA256, dtype=dtype, device=device, device_map=device_map, cache=cache_dequantised)
        lm.spec = "smollm2"
        return lm
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        return _load_gguf(path, None, dtype=dtype, device=device, device_map=device_map, cache=cache_dequantised)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"directory {path} has no config.json", fix="point at a Hugging Face model folder (config.json + *.safetensors)")
        model, tokenizer = _from_pretrained(path, dtype=dtype, device=device, device_map=device_map)
        return LoadedModel(model=model, tokenizer=tokenizer, spec=str(path))
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            model, tokenizer = _from_pretrained(text, dtype=dtype, device=device, device_map=device_map)
        except OSError as exc:
            raise NetworkUnavailableError(
                f"could not load {text!r} from the Hugging Face hub or its local cache ({str(exc).splitlines()[0]})",
                fix="on a machine with network run it once to populate the HF cache, or download the model and pass its directory",
            ) from exc
        return LoadedModel(model=model, tokenizer=tokenizer, spec=text)
    raise ModelNotFoundError(f"model {text!r} is not 'default', a local directory, a .gguf file or a hub id of the form org/name")
