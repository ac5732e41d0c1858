"""Steer files and ``--steer`` values: a list of interventions as YAML/JSON plus a sibling ``.safetensors``.

A steer file (``steer.yaml`` or ``steer.json``) holds the spec of :mod:`.registry`::

    version: 2
    tensors: steer.safetensors        # sibling file, relative to the steer file
    interventions:
      - kind: ablate
        direction: t0                 # name of a tensor in the sibling file
        points: residual_writes       # or a list: [resid_pre.0, attn_out.0, mlp_out.0]
        positions: all
      - kind: add
        vector: t1
        point: resid_pre.12
        coef: 4.0
        positions: prompt
      - kind: cap                     # projection cap (was "clamp": still read, with a warning)
        direction: t2
        points: [resid_pre.10, resid_pre.11]
        ceilings: [0.4, 0.6]
      - kind: gate                    # a nested steer, applied to the answers of the prompts that meet a condition
        condition: {kind: projection, direction: t3}
        point: resid_pre.8
        threshold: 2.5
        reduce: last
        steer:
          - {kind: add, vector: t1, point: resid_pre.12, coef: 4.0}
      - kind: sae_splice              # a resource: an SAE folder (relative to this file) or a shipped name
        sae: default
        point: resid_pre.14

Version 1 files (before nested and resource fields) read the same way. Vectors never go through pickle.
``docs/steers.md`` lists every kind and short form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..atomic import atomic_save_safetensors, atomic_write_text
from ..errors import ConfigError, CorruptFileError, RefusalSteerError
from ..hooks import Intervention, validate_interventions
from ..models.loaded import LoadedModel
from .registry import from_spec, kinds, parse_short_form, short_forms_help, to_spec

STEER_FILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
STEER_SUFFIXES = (".yaml", ".yml", ".json")


def save_steer_file(path: str | Path, interventions: Sequence[Intervention]) -> Path:
    """Write ``interventions`` to ``path`` (``.yaml``/``.yml``/``.json``) and their tensors to a sibling safetensors.

    Example:
        >>> save_steer_file("steer.yaml", [Add(v, "resid_pre.12", coef=4.0)])  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix not in STEER_SUFFIXES:
        raise ConfigError(f"steer file {path} must end in {', '.join(STEER_SUFFIXES)}")
    entries, tensors = to_spec(interventions)
    tensors_path = path.with_suffix(".safetensors")
    doc = {"version": STEER_FILE_VERSION, "tensors": tensors_path.name, "interventions": entries}
    atomic_save_safetensors(tensors, tensors_path, metadata={"format": "refusal-steer/steer", "version": str(STEER_FILE_VERSION)})
    text = json.dumps(doc, indent=2) if path.suffix == ".json" else yaml.safe_dump(doc, sort_keys=False)
    atomic_write_text(path, text)
    return path


def load_steer_file(path: str | Path, lm: LoadedModel | None = None) -> list[Intervention]:
    """Read a steer file back into interventions (validated against ``lm`` when given).

    ``points: residual_writes`` and SAE resources need ``lm`` (the model's layers and width).
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"steer file {path} does not exist", fix=f"pass a steer file (.yaml/.json) or a short form: {short_forms_help()}")
    try:
        doc = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"cannot parse steer file {path}: {exc}", fix="write YAML or JSON (see docs/steers.md)") from exc
    if not isinstance(doc, dict) or "interventions" not in doc:
        raise ConfigError(f"steer file {path} needs a list under 'interventions'", fix="see docs/steers.md for the format")
    unknown = sorted(set(doc) - {"version", "tensors", "interventions"})
    if unknown:
        raise ConfigError(f"steer file {path}: unknown top-level field(s) {unknown}", fix="a steer file has version, tensors and interventions")
    if doc.get("version", STEER_FILE_VERSION) not in READABLE_VERSIONS:
        raise ConfigError(f"steer file {path} has version {doc.get('version')!r}; this refusal-steer reads versions {READABLE_VERSIONS}")
    tensors_path = path.parent / str(doc.get("tensors", path.with_suffix(".safetensors").name))
    tensors = {}
    if tensors_path.is_file():
        try:
            tensors = load_file(str(tensors_path))
        except Exception as exc:
            raise CorruptFileError(f"cannot read {tensors_path}: {exc}", fix="re-save the steer file; the tensors file is truncated or not safetensors") from exc
    out = from_spec(doc["interventions"], tensors, lm=lm, base_dir=path.parent, where=str(path))
    if lm is not None:
        try:
            validate_all(lm, out)
        except RefusalSteerError as exc:
            raise type(exc)(f"{path}: {exc.message}", fix=exc.fix) from exc
    return out


def is_steer_file(spec: str) -> bool:
    """True when ``spec`` looks like a steer file path (a known suffix, or an existing file)."""
    candidate = Path(spec).expanduser()
    return candidate.suffix in STEER_SUFFIXES or candidate.is_file()


def parse_steer(spec: str, lm: LoadedModel) -> list[Intervention]:
    """Parse one ``--steer`` value: a registered short form (``ablate:DIR``, ``actadd:DIR:coef=2.5``, ...) or a steer file.

    ``"none"`` (or an empty string) is the unsteered model.

    Example:
        >>> parse_steer("actadd:runs/dir:coef=-1.5", lm)  # doctest: +SKIP
        [Add(vector=..., point=HookPoint(...resid_pre, 12), coef=-1.5, positions='prompt')]
    """
    text = spec.strip()
    if text in ("", "none", "baseline"):
        return []
    resolved = parse_short_form(text, lm)
    if resolved is not None:
        out = list(resolved)
    elif is_steer_file(text):
        out = load_steer_file(text, lm)
    else:
        prefix = text.partition(":")[0]
        raise ConfigError(f"cannot read --steer {spec!r}" + (f": no short form {prefix!r}" if ":" in text else ""),
                          fix=f"write one of {short_forms_help()}, 'none', or the path of a steer file (.yaml/.json; kinds: "
                              f"{', '.join(sorted(kinds()))})")
    validate_all(lm, out)
    return out


validate_all = validate_interventions
"""Check every point and width against ``lm`` before any forward pass (:func:`refusal_steer.hooks.validate_interventions`)."""
