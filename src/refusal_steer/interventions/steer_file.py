"""Steer files: a list of interventions as small YAML/JSON plus a sibling ``.safetensors`` of vectors.

A steer file (``steer.yaml`` or ``steer.json``) looks like::

    version: 1
    tensors: steer.safetensors        # sibling file, relative to the steer file
    interventions:
      - kind: ablate
        direction: t0                 # name of a tensor in the sibling file
        points: [resid_pre.0, attn_out.0, mlp_out.0]   # or "residual_writes" (every layer)
        positions: all
      - kind: add
        vector: t1
        point: resid_pre.12
        coef: 4.0
        positions: prompt
      - kind: set_projection
        direction: t2
        point: resid_pre.12
        value: 8.0
      - kind: clamp                   # capped ablation: lower the projection to a ceiling where above it
        direction: t3
        points: [resid_pre.10, resid_pre.11]
        ceilings: [0.4, 0.6]          # one per point

Vectors never go through pickle. The CLI also accepts short forms over a saved direction
(:mod:`refusal_steer.directions.io`): ``ablate:DIR`` (ablation at every residual write of every layer)
and ``actadd:DIR[:COEF]`` (add the raw direction at the point it was computed at: ``DIR/actadd.safetensors``
when selection wrote one, else ``DIR/direction.safetensors``; COEF defaults to the coefficient calibrated
when the direction was selected, stored as ``actadd_coef``, else 1; added at the positions stored as
``actadd_positions``: the prompt's tokens for directions selected by this version) and ``clamp:DIR`` (capped ablation at
``resid_pre`` of every layer with the direction and ceilings of ``DIR/clamp.safetensors``; see
:mod:`refusal_steer.directions.clamp`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ConfigError, CorruptFileError, RefusalSteerError
from ..hooks import Intervention
from ..models.loaded import LoadedModel
from .ablate import Ablate, residual_writes
from .add import Add
from .clamp import Clamp
from .project import SetProjection

STEER_FILE_VERSION = 1
RESIDUAL_WRITES = "residual_writes"

# kind -> (class, name of its tensor field, names of its other fields)
_KINDS: dict[str, tuple[type, str, tuple[str, ...]]] = {}


def register_kind(cls: type, tensor_field: str, fields: tuple[str, ...]) -> None:
    """Make an intervention class serialisable under ``cls.kind``; registering a kind twice is an error."""
    kind = cls.kind  # type: ignore[attr-defined]
    if kind in _KINDS:
        raise ValueError(f"intervention kind {kind!r} is already registered ({_KINDS[kind][0].__name__})")
    _KINDS[kind] = (cls, tensor_field, fields)


register_kind(Ablate, "direction", ("points", "positions"))
register_kind(Add, "vector", ("point", "coef", "positions"))
register_kind(SetProjection, "direction", ("point", "value", "positions"))
register_kind(Clamp, "direction", ("points", "ceilings", "positions"))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "site"):  # a HookPoint
        return str(value)
    return value


def save_steer_file(path: str | Path, interventions: Sequence[Intervention]) -> Path:
    """Write ``interventions`` to ``path`` (``.yaml``/``.yml``/``.json``) and vectors to a sibling safetensors.

    Example:
        >>> save_steer_file("steer.yaml", [Add(v, "resid_pre.12", coef=4.0)])  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors_path = path.with_suffix(".safetensors")
    entries, tensors = [], {}
    for i, intervention in enumerate(interventions):
        kind = getattr(intervention, "kind", None)
        if kind not in _KINDS:
            raise ConfigError(f"intervention {i} ({type(intervention).__name__}) has no serialisable kind", fix=f"serialisable kinds: {', '.join(_KINDS)}")
        _cls, tensor_field, fields = _KINDS[kind]
        name = f"t{i}"
        tensors[name] = getattr(intervention, tensor_field).detach().to("cpu", torch.float32).contiguous()
        entry: dict[str, Any] = {"kind": kind, tensor_field: name}
        entry.update({f: _plain(getattr(intervention, f)) for f in fields})
        entries.append(entry)
    doc = {"version": STEER_FILE_VERSION, "tensors": tensors_path.name, "interventions": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tensors_path), metadata={"format": "refusal-steer/steer", "version": str(STEER_FILE_VERSION)})
    text = json.dumps(doc, indent=2) if path.suffix == ".json" else yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text)
    return path


def load_steer_file(path: str | Path, lm: LoadedModel | None = None) -> list[Intervention]:
    """Read a steer file back into interventions (validated against ``lm`` when given).

    ``points: residual_writes`` needs ``lm`` (it expands to every layer of that model).
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"steer file {path} does not exist", fix="pass a steer file (.yaml/.json) or a short form ablate:DIR / actadd:DIR[:COEF]")
    try:
        doc = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CorruptFileError(f"cannot parse steer file {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("interventions"), list):
        raise ConfigError(f"steer file {path} needs a list under 'interventions'")
    if doc.get("version", STEER_FILE_VERSION) != STEER_FILE_VERSION:
        raise ConfigError(f"steer file {path} has version {doc.get('version')!r}; this refusal-steer reads version {STEER_FILE_VERSION}")
    tensors_path = path.parent / str(doc.get("tensors", path.with_suffix(".safetensors").name))
    tensors = load_file(str(tensors_path)) if tensors_path.is_file() else {}
    out: list[Intervention] = []
    for i, entry in enumerate(doc["interventions"]):
        where = f"{path} intervention {i}"
        if not isinstance(entry, dict) or entry.get("kind") not in _KINDS:
            raise ConfigError(f"{where}: unknown kind {entry.get('kind') if isinstance(entry, dict) else entry!r}", fix=f"use one of {', '.join(_KINDS)}")
        cls, tensor_field, fields = _KINDS[entry["kind"]]
        unknown = set(entry) - {"kind", tensor_field, *fields}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}", fix=f"{entry['kind']} takes {tensor_field}, {', '.join(fields)}")
        name = entry.get(tensor_field)
        if name not in tensors:
            raise ConfigError(f"{where}: tensor {name!r} is not in {tensors_path}")
        kwargs = {f: entry[f] for f in fields if f in entry}
        if kwargs.get("points") == RESIDUAL_WRITES:
            if lm is None:
                raise ConfigError(f"{where}: points '{RESIDUAL_WRITES}' needs the model to expand", fix="pass lm=... to load_steer_file")
            kwargs["points"] = residual_writes(lm)
        try:
            intervention = cls(tensors[name], **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        except RefusalSteerError as exc:
            raise type(exc)(f"{where}: {exc.message}", fix=exc.fix) from exc
        out.append(intervention)
    if lm is not None:
        validate_all(lm, out)
    return out


def parse_steer(spec: str, lm: LoadedModel) -> list[Intervention]:
    """Parse one CLI ``--steer`` value: ``ablate:DIR``, ``actadd:DIR[:COEF]``, ``clamp:DIR`` or a steer file path.

    Example:
        >>> parse_steer("actadd:runs/dir:-1.5", lm)  # doctest: +SKIP
        [Add(vector=..., point=HookPoint(...resid_pre, 12), coef=-1.5, positions='prompt')]
    """
    from ..directions.clamp import load_clamp
    from ..directions.io import actadd_intervention, load_ablation_direction

    kind, sep, rest = spec.partition(":")
    if sep and kind == "ablate":  # the refined direction when DIR has one (DIR/direction.safetensors: the selected one)
        saved = load_ablation_direction(rest)
        out: list[Intervention] = [Ablate(saved.direction, residual_writes(lm))]
    elif sep and kind == "actadd":
        directory, coef = rest, None
        head, sep2, tail = rest.rpartition(":")
        if sep2:
            try:
                directory, coef = head, float(tail)
            except ValueError:
                directory = rest
        out = [actadd_intervention(directory, coef)]  # calibrated coefficient and positions unless COEF is given
    elif sep and kind == "clamp":
        out = [load_clamp(rest).intervention()]
    elif Path(spec).expanduser().suffix in (".yaml", ".yml", ".json") or Path(spec).expanduser().is_file():
        out = load_steer_file(spec, lm)
    else:
        raise ConfigError(f"cannot read --steer {spec!r}", fix="write ablate:DIR, actadd:DIR[:COEF], clamp:DIR or the path of a steer file (.yaml/.json)")
    validate_all(lm, out)
    return out


def validate_all(lm: LoadedModel, interventions: Sequence[Intervention]) -> None:
    """Check every point and width against ``lm`` before any forward pass (what ``install`` does first)."""
    for intervention in interventions:
        for point in intervention.points:
            point.validate(lm)
        intervention.validate(lm)
