"""Write a GGUF that is a source GGUF with some tensors replaced (for llama.cpp, Ollama and other stock engines).

An edit such as weight orthogonalisation changes a few float matrices of a model that came as a GGUF. Rather
than converting a whole Hugging Face folder (llama.cpp's ``convert_hf_to_gguf.py`` and its tokenizer tables),
we copy the source GGUF — every metadata field, the tokenizer and every untouched tensor byte for byte — and
replace only the edited tensors, quantised with the ``gguf`` package. What a stock engine loads is then the
source model except for the edit.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ConfigError, CorruptFileError, UnsupportedFamilyError
from .default import default_gguf_path, smollm2_gguf_path

logger = logging.getLogger(__name__)

TensorType = Literal["source", "q8_0", "f16", "f32"]
TENSOR_TYPES: tuple[str, ...] = ("source", "q8_0", "f16", "f32")
EDIT_KEY = "refusal_steer.edit"
"""Metadata key of the JSON record of the edit (source file and hash, what was changed)."""

# Architectures whose GGUF tensors transformers and llama.cpp read in Hugging Face orientation (out, in) for the
# matrices an edit of the residual stream touches; GPT-2-style files store some of them transposed.
SUPPORTED_ARCHS: tuple[str, ...] = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class GgufExport:
    """What :func:`write_gguf_with_replacements` wrote.

    Attributes:
        path: the GGUF written.
        replaced: per replaced tensor, its GGUF type name in the output (e.g. ``"Q8_0"``).
        added: tensors the source did not have (e.g. ``output.weight`` when an edit unties the embedding).
        bytes: size of the file.
    """

    path: Path
    replaced: dict[str, str] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


def check_tensor_type(tensor_type: str) -> None:
    """Reject a ``--gguf-type`` / ``tensor_type`` that is not one of :data:`TENSOR_TYPES`."""
    if tensor_type not in TENSOR_TYPES:
        raise ConfigError(f"unknown GGUF tensor type {tensor_type!r}", fix=f"use one of {', '.join(TENSOR_TYPES)} (--gguf-type)")


def gguf_architecture(path: str | Path) -> str:
    """The ``general.architecture`` of a GGUF file."""
    return _architecture(_reader(path), path)


def _architecture(reader, path: str | Path) -> str:
    field_ = reader.get_field("general.architecture")
    if field_ is None:
        raise CorruptFileError(f"{path} has no general.architecture field", fix="pass a GGUF written by llama.cpp or the gguf package")
    return str(field_.contents())


def gguf_tensor_names(path: str | Path) -> set[str]:
    """Names of the tensors in a GGUF file."""
    return {t.name for t in _reader(path).tensors}


def gguf_source_path(spec: str) -> Path | None:
    """The GGUF a model spec loads from (``default``, ``smollm2`` or a ``.gguf`` path), or None for other sources."""
    if spec == "default":
        return default_gguf_path()
    if spec == "smollm2":
        return smollm2_gguf_path()
    path = Path(spec).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def gguf_tensor_name(arch: str, n_blocks: int, hf_name: str) -> str:
    """The GGUF name of a Hugging Face parameter, e.g. ``model.layers.3.mlp.down_proj.weight`` -> ``blk.3.ffn_down.weight``."""
    import gguf

    arch_enum = _arch_enum(arch)
    name = gguf.get_tensor_name_map(arch_enum, n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise UnsupportedFamilyError(f"no GGUF tensor name for {hf_name!r} in architecture {arch!r}",
                                     fix="export the Hugging Face folder instead and convert it with llama.cpp's convert_hf_to_gguf.py")
    return name


def write_gguf_with_replacements(
    source: str | Path,
    out: str | Path,
    replacements: Mapping[str, np.ndarray],
    *,
    tensor_type: TensorType = "source",
    added: Mapping[str, str] | None = None,
    record: dict | None = None,
    progress: bool = True,
) -> GgufExport:
    """Copy ``source`` to ``out`` with the tensors in ``replacements`` (GGUF name -> float array) replaced.

    Args:
        source: the GGUF the model was loaded from.
        out: the file to write (written to ``out.partial`` and renamed, so a cut run leaves no half file).
        replacements: float arrays in Hugging Face orientation (``(out, in)`` for matrices), one per GGUF name.
        tensor_type: ``"source"`` keeps each tensor's source type when the ``gguf`` package can write it
            (F32/F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) and uses Q8_0 otherwise (K-quants); or one type for all.
        added: new tensors copied byte for byte from another tensor of the source (new name -> source name),
            e.g. ``{"output.weight": "token_embd.weight"}`` to keep the original unembedding of a tied model.
        record: JSON-able description of the edit, stored under :data:`EDIT_KEY`.
        progress: show a progress bar.

    Returns:
        A :class:`GgufExport`.
    """
    import gguf
    from tqdm.auto import tqdm

    check_tensor_type(tensor_type)
    source, out = Path(source), Path(out)
    reader = _reader(source)
    arch = _architecture(reader, source)
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedFamilyError(
            f"GGUF export of an edited {arch!r} model is not supported (only {', '.join(SUPPORTED_ARCHS)})",
            fix="use the Hugging Face folder it wrote and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    tensors = {t.name: t for t in reader.tensors}
    missing = sorted(set(replacements) - set(tensors))
    if missing:
        raise ConfigError(f"{source.name} has no tensor(s) {', '.join(missing[:5])}", fix="pass GGUF tensor names of this file")
    added = dict(added or {})
    for new, old in added.items():
        if new in tensors or old not in tensors:
            raise ConfigError(f"cannot add {new!r} as a copy of {old!r}: {new!r} exists or {old!r} does not")

    encoded: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]] = {}
    for name in tqdm(list(replacements), desc="quantising edited tensors", disable=not progress, unit="tensor"):
        encoded[name] = _encode(replacements[name], tensors[name], tensor_type)

    writer_path = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(writer_path, arch, endianess=reader.endianess)
    for key, field_ in reader.fields.items():
        if key == "general.architecture" or key.startswith("GGUF.") or key == EDIT_KEY:
            continue
        value_type = field_.types[0]
        sub_type = field_.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field_.contents(), value_type, sub_type=sub_type)
    if record is not None:
        writer.add_string(EDIT_KEY, json.dumps(record, sort_keys=True, default=str))

    order: list[tuple[str, np.ndarray, gguf.GGMLQuantizationType]] = []
    for tensor in reader.tensors:
        data, qtype = encoded.get(tensor.name, (tensor.data, tensor.tensor_type))
        order.append((tensor.name, data, qtype))
    for new, old in added.items():
        order.append((new, tensors[old].data, tensors[old].tensor_type))
    for name, data, qtype in order:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, raw_dtype=qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _name, data, _qtype in tqdm(order, desc=f"writing {out.name}", disable=not progress, unit="tensor"):
            writer.write_tensor_data(data)
        writer.close()
    except OSError as exc:
        writer_path.unlink(missing_ok=True)
        raise ConfigError(f"could not write {out} ({exc})", fix="free disk space or choose another --out") from exc
    os.replace(writer_path, out)
    return GgufExport(
        path=out,
        replaced={name: qtype.name for name, (_data, qtype) in encoded.items()},
        added={new: tensors[old].tensor_type.name for new, old in added.items()},
        bytes=out.stat().st_size,
    )


def _encode(array: np.ndarray, tensor, tensor_type: str):
    """``array`` in the GGUF type asked for, as the bytes (or float array) the writer takes, with that type."""
    import gguf

    types = gguf.GGMLQuantizationType
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    expected = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    if tuple(array.shape) != expected:
        raise ConfigError(f"replacement for {tensor.name} has shape {tuple(array.shape)}; the GGUF tensor is {expected}")
    wanted = {"q8_0": types.Q8_0, "f16": types.F16, "f32": types.F32}.get(tensor_type)
    if wanted is None:  # "source"
        writable = (types.F32, types.F16, types.BF16, types.Q4_0, types.Q4_1, types.Q5_0, types.Q5_1, types.Q8_0)
        wanted = tensor.tensor_type if tensor.tensor_type in writable else types.Q8_0
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if array.shape[-1] % block:
        logger.info("%s: last dimension %d is not a multiple of %d; writing it as F16", tensor.name, array.shape[-1], block)
        wanted = types.F16
    if wanted == types.F32:
        return array, wanted
    if wanted == types.F16:
        return array.astype(np.float16), wanted
    return gguf.quants.quantize(array, wanted), wanted


def _reader(path: str | Path):
    import gguf

    try:
        return gguf.GGUFReader(Path(path), "r")
    except (ValueError, OSError) as exc:
        raise CorruptFileError(f"cannot read GGUF {path} ({exc})", fix="pass a valid .gguf file") from exc


def _arch_enum(arch: str):
    import gguf

    for key, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return key
    raise UnsupportedFamilyError(f"unknown GGUF architecture {arch!r}")
