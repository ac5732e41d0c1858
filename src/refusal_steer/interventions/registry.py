"""The steer language: registered intervention kinds, their fields, specs, short forms and fingerprints.

Every serialisable intervention kind is registered here with the fields it is built from:

- **tensor** fields: vectors, stored in a sibling ``.safetensors`` and named in the spec (``direction: t0``);
- **scalar** fields: numbers, flags, strings, hook points and position selectors, checked by type
  (a number must be finite);
- **resource** fields: things loaded by reference, such as an SAE by folder or shipped name
  (``sae: default``); the layer that owns the format registers a :class:`ResourceType` that loads it,
  names it and hashes its content;
- **nested** fields: a list of interventions (what a gate wraps);
- **condition** fields: one *condition* (what a gate reads: a projection, a cosine, a probe, an SAE
  latent), itself a registered value with its own fields (:func:`register_condition`), written as a
  mapping with a ``kind`` (``condition: {kind: cosine, direction: t0}``).

:func:`to_spec` and :func:`from_spec` turn interventions into a JSON/YAML-able document plus named
tensors and back; :func:`fingerprint` hashes the spec, the tensor bytes and each resource's content, so
the same steer has the same fingerprint in any process and after a save/load round trip. Short forms
such as ``ablate:DIR`` are resolvers registered by the module that owns the saved format
(:func:`register_short_form`), so this module imports nothing above the interventions layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import ConfigError, RefusalSteerError
from ..hooks import HookPoint, Intervention, residual_writes
from ..models.loaded import LoadedModel
from .positions import parse_positions

FieldRole = Literal["tensor", "scalar", "resource", "nested", "condition"]
Family = Literal["intervention", "condition"]
ScalarType = Literal["float", "int", "bool", "str", "point", "points", "positions", "floats", "ints"]

RESIDUAL_WRITES = "residual_writes"
"""``points: residual_writes`` in a spec: every ``resid_pre``, ``attn_out`` and ``mlp_out`` of the model."""


@dataclass(frozen=True)
class FieldSpec:
    """One field of a kind: its name, its role, its type (scalars) or resource type, and whether it may be left out."""

    name: str
    role: FieldRole
    type: str = ""
    required: bool = True
    doc: str = ""
    minimum: float | None = None
    """For ``int``/``float`` scalars: the smallest value allowed (checked by :func:`check_scalars`)."""


@dataclass(frozen=True)
class KindSpec:
    """A registered intervention kind: the class, its fields, and a one-line description."""

    name: str
    cls: type
    fields: tuple[FieldSpec, ...]
    doc: str
    aliases: tuple[str, ...] = ()
    family: Family = "intervention"
    """``intervention`` (a steer's entries) or ``condition`` (what a gate's ``condition`` field holds)."""
    upgrade: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    """Rewrites an entry in an older field layout into the current one (None when it is current); the
    old layout still loads, with a deprecation warning."""

    def field(self, name: str) -> FieldSpec:
        return next(f for f in self.fields if f.name == name)

    def signature(self) -> str:
        """``kind(direction: tensor, points: points, positions?: positions)`` for help and error text."""
        parts = [f"{f.name}{'' if f.required else '?'}: {f.type or f.role}" for f in self.fields]
        return f"{self.name}({', '.join(parts)})"


@dataclass(frozen=True)
class ResourceType:
    """How a resource field is loaded, referenced and hashed (registered by the layer that owns the format).

    Attributes:
        name: the resource type (``"sae"``).
        load: ``load(reference, base_dir, lm)`` returns the object; ``reference`` is a folder (relative to
            the steer file's folder when not absolute) or a registered name.
        reference: the string that loads the object again, or None when it was never saved.
        content_hash: a hash of the object's content (weights and config), stable across processes.
    """

    name: str
    load: Callable[[str, Path | None, LoadedModel | None], Any]
    reference: Callable[[Any], str | None]
    content_hash: Callable[[Any], str]


@dataclass(frozen=True)
class ShortForm:
    """A ``PREFIX:ARG[:key=value...]`` resolver: ``resolve(arg, options, lm)`` returns interventions."""

    prefix: str
    resolve: Callable[[str, dict[str, Any], LoadedModel], list[Intervention]]
    options: Mapping[str, str]
    """Option name -> scalar type (see :data:`ScalarType`)."""
    positional: tuple[str, ...] = ()
    """Options that may also be given bare, in this order (``actadd:DIR:2.5`` sets ``coef``)."""
    help: str = ""
    deprecated: str | None = None
    """When set, using the form warns with this text (the form that replaces it)."""

    def usage(self) -> str:
        opts = "".join(f"[:{name}=…]" for name in self.options)
        return f"{self.prefix}:DIR{opts}"


_KINDS: dict[str, KindSpec] = {}
_CONDITIONS: dict[str, KindSpec] = {}
_ALIASES: dict[str, str] = {}
_BY_CLASS: dict[type, KindSpec] = {}
_RESOURCES: dict[str, ResourceType] = {}
_SHORT_FORMS: dict[str, ShortForm] = {}


# --------------------------------------------------------------------------------------------- registration


def register_kind(cls: type, fields: Sequence[FieldSpec], *, doc: str = "", aliases: Sequence[str] = (),
                  upgrade: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> KindSpec:
    """Make ``cls`` (with a ``kind`` class attribute) serialisable; registering a kind or alias twice is an error.

    ``aliases`` are older names that still load, with a deprecation warning (``clamp`` for ``cap``);
    ``upgrade`` rewrites an entry in an older field layout (see :attr:`KindSpec.upgrade`).
    """
    name = getattr(cls, "kind", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} has no 'kind' class attribute")
    for taken in (name, *aliases):
        if taken in _KINDS or taken in _ALIASES:
            raise ValueError(f"intervention kind {taken!r} is already registered ({kind_spec(taken).cls.__name__})")
    spec = KindSpec(name=name, cls=cls, fields=tuple(fields), doc=doc or (cls.__doc__ or "").strip().splitlines()[0], aliases=tuple(aliases),
                    upgrade=upgrade)
    _check_fields(spec)
    _KINDS[name] = spec
    _BY_CLASS[cls] = spec
    for alias in aliases:
        _ALIASES[alias] = name
    return spec


def register_condition(cls: type, fields: Sequence[FieldSpec], *, doc: str = "") -> KindSpec:
    """Register a gate condition (a class with a ``kind`` class attribute and ``score(x)``); registering a name twice is an error.

    Conditions have their own names (``cosine``, ``probe``...), apart from intervention kinds: they are
    only read inside a gate's ``condition`` field.
    """
    name = getattr(cls, "kind", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} has no 'kind' class attribute")
    if name in _CONDITIONS:
        raise ValueError(f"condition {name!r} is already registered ({_CONDITIONS[name].cls.__name__})")
    spec = KindSpec(name=name, cls=cls, fields=tuple(fields), doc=doc or (cls.__doc__ or "").strip().splitlines()[0], family="condition")
    _check_fields(spec)
    _CONDITIONS[name] = spec
    _BY_CLASS[cls] = spec
    return spec


def _check_fields(spec: KindSpec) -> None:
    for f in spec.fields:
        if f.role == "resource" and not f.type:
            raise ValueError(f"{spec.name}.{f.name}: a resource field names its resource type")
        if spec.family == "condition" and f.role in ("nested", "condition"):
            raise ValueError(f"{spec.name}.{f.name}: a condition holds no interventions or conditions")


def register_resource(resource: ResourceType) -> None:
    """Register how a resource type loads and hashes; registering a name twice is an error."""
    if resource.name in _RESOURCES:
        raise ValueError(f"resource type {resource.name!r} is already registered")
    _RESOURCES[resource.name] = resource


def register_short_form(form: ShortForm) -> None:
    """Register a ``PREFIX:...`` short form; registering a prefix twice is an error."""
    if form.prefix in _SHORT_FORMS:
        raise ValueError(f"short form {form.prefix!r}: is already registered")
    for name, kind in form.options.items():
        if kind not in ScalarType.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"short form {form.prefix}: option {name} has unknown type {kind!r}")
    _SHORT_FORMS[form.prefix] = form


def kinds() -> dict[str, KindSpec]:
    """Every registered kind by name (aliases not included)."""
    return dict(_KINDS)


def conditions() -> dict[str, KindSpec]:
    """Every registered gate condition by name."""
    return dict(_CONDITIONS)


def condition_spec(name: str) -> KindSpec:
    """The registered condition ``name``; unknown is a :class:`ConfigError` listing the registered ones."""
    if name in _CONDITIONS:
        return _CONDITIONS[name]
    raise ConfigError(f"unknown condition {name!r}", fix=f"use one of {', '.join(sorted(_CONDITIONS)) or '(none registered)'}")


def _spec_in(family: Family, name: str) -> KindSpec:
    return kind_spec(name) if family == "intervention" else condition_spec(name)


def short_forms() -> dict[str, ShortForm]:
    """Every registered short form by prefix."""
    return dict(_SHORT_FORMS)


def short_forms_help() -> str:
    """One line listing the registered short forms, for ``--help``."""
    forms = [f.usage() for f in _SHORT_FORMS.values() if not f.deprecated]
    return ", ".join(forms) if forms else "(none registered)"


def kind_spec(name: str) -> KindSpec:
    """The registered kind ``name`` (an alias resolves to its kind); unknown is a :class:`ConfigError`."""
    if name in _KINDS:
        return _KINDS[name]
    if name in _ALIASES:
        return _KINDS[_ALIASES[name]]
    raise ConfigError(f"unknown intervention kind {name!r}", fix=f"use one of {', '.join(sorted(_KINDS))}")


def spec_of(intervention: Any) -> KindSpec:
    """The registered kind of an intervention object."""
    spec = _BY_CLASS.get(type(intervention))
    if spec is None:
        raise ConfigError(f"{type(intervention).__name__} is not a registered intervention kind or gate condition and cannot be saved or fingerprinted",
                          fix=f"use one of the registered kinds ({', '.join(sorted(_KINDS))}) or conditions ({', '.join(sorted(_CONDITIONS))})")
    return spec


# --------------------------------------------------------------------------------------------- scalar checks


def check_scalars(obj: Any) -> None:
    """Check and normalise, in place, every scalar field a registered kind declares (a kind's ``__post_init__`` calls it).

    Frozen dataclasses are written with ``object.__setattr__``; a value below a field's ``minimum`` is a
    :class:`ConfigError` naming the field.
    """
    spec = _BY_CLASS.get(type(obj))
    if spec is None:
        raise ValueError(f"{type(obj).__name__} is not a registered intervention kind")
    for f in spec.fields:
        if f.role != "scalar":
            continue
        value = check_scalar(spec.name, f.name, f.type, getattr(obj, f.name))
        if f.minimum is not None and value < f.minimum:
            raise ConfigError(f"{spec.name}.{f.name} must be >= {f.minimum:g}, got {value}", fix=f"give {f.name} a value >= {f.minimum:g}")
        object.__setattr__(obj, f.name, value)


def check_scalar(kind: str, name: str, type_: str, value: Any) -> Any:
    """Check and normalise one scalar field; a wrong type or a non-finite number is a :class:`ConfigError` naming the field."""
    where = f"{kind}.{name}"
    try:
        if type_ == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise TypeError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{where} must be a finite number, got {value!r}", fix=f"give {name} a finite number")
            return number
        if type_ == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return int(value)
        if type_ == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if type_ == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if type_ == "point":
            return HookPoint.parse(value)
        if type_ == "points":
            points = [value] if isinstance(value, (str, HookPoint)) else list(value)
            parsed = tuple(HookPoint.parse(p) for p in points)
            if not parsed:
                raise ConfigError(f"{where} is empty", fix="give at least one hook point, e.g. [resid_pre.12]")
            return parsed
        if type_ == "positions":
            return parse_positions(value)
        if type_ == "floats":
            items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
            return tuple(check_scalar(kind, name, "float", v) for v in items)
        if type_ == "ints":
            items = [value] if isinstance(value, int) and not isinstance(value, bool) else list(value)
            if not items:
                raise ConfigError(f"{where} is empty", fix=f"give {name} at least one integer")
            return tuple(check_scalar(kind, name, "int", v) for v in items)
    except RefusalSteerError as exc:
        if exc.message.startswith(where):
            raise
        raise type(exc)(f"{where}: {exc.message}", fix=exc.fix) from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {_TYPE_WORDS.get(type_, type_)}, got {value!r}", fix=f"give {name} {_TYPE_WORDS.get(type_, type_)}") from None
    raise ValueError(f"unknown scalar type {type_!r}")


_TYPE_WORDS = {"float": "a finite number", "int": "an integer", "bool": "true or false", "str": "a string", "point": "a hook point like resid_pre.12",
               "points": "a list of hook points", "positions": "all, prompt, generated or a list of prompt indices",
               "floats": "a number or a list of numbers", "ints": "an integer or a list of integers"}


# --------------------------------------------------------------------------------------------- specs


@dataclass
class _Writer:
    tensors: dict[str, Tensor] = field(default_factory=dict)
    by_hash: dict[str, str] = field(default_factory=dict)

    def add(self, tensor: Tensor) -> str:
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest = tensor_hash(data)
        if digest not in self.by_hash:  # one tensor saved once even if several interventions share it
            name = f"t{len(self.tensors)}"
            self.by_hash[digest] = name
            self.tensors[name] = data
        return self.by_hash[digest]


def tensor_hash(tensor: Tensor) -> str:
    """sha256 of a tensor's float32 bytes and shape."""
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, HookPoint):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def to_spec(interventions: Sequence[Intervention]) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """The JSON/YAML-able spec of ``interventions`` and the named tensors it refers to.

    Example:
        >>> entries, tensors = to_spec([Add(v, "resid_pre.12", coef=4.0)])  # doctest: +SKIP
        >>> entries
        [{'kind': 'add', 'vector': 't0', 'point': 'resid_pre.12', 'coef': 4.0, 'positions': 'all'}]
    """
    writer = _Writer()
    return [_entry(i, writer, resolve_resource=True) for i in interventions], writer.tensors


def _entry(intervention: Any, writer: _Writer, *, resolve_resource: bool) -> dict[str, Any]:
    spec = spec_of(intervention)
    entry: dict[str, Any] = {"kind": spec.name}
    for f in spec.fields:
        value = getattr(intervention, f.name)
        if f.role == "tensor":
            entry[f.name] = writer.add(value)
        elif f.role == "scalar":
            entry[f.name] = _plain(value)
        elif f.role == "resource":
            resource = _RESOURCES[f.type]
            if resolve_resource:
                reference = resource.reference(value)
                if reference is None:
                    raise ConfigError(f"{spec.name}.{f.name}: this {f.type} was never saved, so a steer file cannot refer to it",
                                      fix=f"save the {f.type} first (e.g. save_sae(sae, DIR)) and load it from there")
                entry[f.name] = reference
            else:
                entry[f.name] = {"type": f.type, "sha256": resource.content_hash(value)}
        elif f.role == "condition":
            entry[f.name] = _entry(value, writer, resolve_resource=resolve_resource)
        else:
            entry[f.name] = [_entry(child, writer, resolve_resource=resolve_resource) for child in value]
    return entry


def from_spec(entries: Any, tensors: Mapping[str, Tensor], *, lm: LoadedModel | None = None, base_dir: Path | None = None,
              where: str = "steer") -> list[Intervention]:
    """Build interventions from a spec (the inverse of :func:`to_spec`); every problem is a :class:`ConfigError` naming the field.

    ``points: residual_writes`` expands to every residual write of ``lm`` (so it needs ``lm``); resource
    references are resolved relative to ``base_dir``.
    """
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'interventions' must be a list of entries", fix="write interventions: [ {kind: ablate, ...}, ... ]")
    return [_build(entry, tensors, lm, base_dir, f"{where} intervention {i}") for i, entry in enumerate(entries)]


def _build(entry: Any, tensors: Mapping[str, Tensor], lm: LoadedModel | None, base_dir: Path | None, where: str,
           family: Family = "intervention") -> Any:
    table = _KINDS if family == "intervention" else _CONDITIONS
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: an entry must be a mapping with a 'kind', got {entry!r}",
                          fix="write e.g. {kind: cosine, direction: t0}" if family == "condition" else None)
    if "kind" not in entry:
        raise ConfigError(f"{where}: no 'kind'", fix=f"add kind: one of {', '.join(sorted(table))}")
    name = entry["kind"]
    try:
        spec = _spec_in(family, str(name))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", fix=exc.fix) from None
    if name != spec.name:
        warnings.warn(f"intervention kind {name!r} is deprecated; write {spec.name!r} (same behaviour)", DeprecationWarning, stacklevel=3)
    if spec.upgrade is not None:
        try:
            upgraded = spec.upgrade(entry)
        except RefusalSteerError as exc:
            raise type(exc)(f"{where}: {exc.message}", fix=exc.fix) from None
        if upgraded is not None:
            warnings.warn(f"{where}: this {spec.name} entry uses an older field layout; it loads as {spec.signature()} "
                          f"(re-save the steer to write the new one)", DeprecationWarning, stacklevel=3)
            entry = upgraded
    known = {f.name for f in spec.fields}
    unknown = sorted(set(entry) - known - {"kind"})
    if unknown:
        raise ConfigError(f"{where} ({spec.name}): unknown field(s) {unknown}", fix=f"{spec.signature()}")
    kwargs: dict[str, Any] = {}
    for f in spec.fields:
        if f.name not in entry:
            if f.required:
                raise ConfigError(f"{where} ({spec.name}): missing field {f.name!r}", fix=f"{spec.signature()}")
            continue
        value = entry[f.name]
        if f.role == "tensor":
            if not isinstance(value, str) or value not in tensors:
                raise ConfigError(f"{where} ({spec.name}): field {f.name!r} names tensor {value!r}, which the tensors file does not hold",
                                  fix=f"name one of {sorted(tensors) or '(no tensors)'}")
            kwargs[f.name] = tensors[value]
        elif f.role == "scalar":
            if f.type == "points" and value == RESIDUAL_WRITES:
                if lm is None:
                    raise ConfigError(f"{where} ({spec.name}): points '{RESIDUAL_WRITES}' needs the model to expand",
                                      fix="pass lm=... when loading")
                kwargs[f.name] = residual_writes(lm)
            else:
                try:
                    kwargs[f.name] = check_scalar(spec.name, f.name, f.type, value)
                except RefusalSteerError as exc:
                    raise type(exc)(f"{where}: {exc.message}", fix=exc.fix) from None
        elif f.role == "resource":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where} ({spec.name}): field {f.name!r} must name a {f.type} (a folder or a shipped name), got {value!r}")
            resource = _RESOURCES.get(f.type)
            if resource is None:
                raise ConfigError(f"{where} ({spec.name}): no loader for resource type {f.type!r}", fix="import refusal_steer (it registers every format)")
            try:
                kwargs[f.name] = resource.load(value, base_dir, lm)
            except RefusalSteerError as exc:
                raise type(exc)(f"{where} ({spec.name}.{f.name}): {exc.message}", fix=exc.fix) from exc
        elif f.role == "condition":
            if not isinstance(value, dict):
                raise ConfigError(f"{where} ({spec.name}): field {f.name!r} must be a condition mapping with a 'kind', got {value!r}",
                                  fix=f"write {f.name}: {{kind: one of {', '.join(sorted(_CONDITIONS))}, ...}}")
            kwargs[f.name] = _build(value, tensors, lm, base_dir, f"{where}.{f.name}", family="condition")
        else:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{where} ({spec.name}): field {f.name!r} must be a non-empty list of interventions",
                                  fix=f"give {f.name} at least one entry, e.g. [{{kind: add, vector: t0, point: resid_pre.12}}]")
            kwargs[f.name] = tuple(_build(child, tensors, lm, base_dir, f"{where}.{f.name}[{j}]") for j, child in enumerate(value))
    try:
        return spec.cls(**kwargs)
    except RefusalSteerError as exc:
        raise type(exc)(f"{where} ({spec.name}): {exc.message}", fix=exc.fix) from exc
    except TypeError as exc:
        raise ConfigError(f"{where} ({spec.name}): {exc}", fix=spec.signature()) from exc


# --------------------------------------------------------------------------------------------- fingerprints


def fingerprint(interventions: Sequence[Intervention]) -> str:
    """A stable 16-hex-digit hash of a steer: its spec, the bytes of its tensors and each resource's content hash.

    The empty steer (the unsteered model) has a fingerprint too. Changing any number, tensor, point or
    position changes it; saving and loading does not.

    Example:
        >>> fingerprint([]) == fingerprint(())
        True
    """
    writer = _Writer()
    entries = [_entry(i, writer, resolve_resource=False) for i in interventions]
    hashes = {name: tensor_hash(t) for name, t in writer.tensors.items()}
    canonical = json.dumps({"interventions": _replace_names(entries, hashes)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _replace_names(entries: list[dict[str, Any]], hashes: dict[str, str], family: Family = "intervention") -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        spec = _spec_in(family, entry["kind"])
        new = dict(entry)
        for f in spec.fields:
            if f.role == "tensor":
                new[f.name] = hashes[entry[f.name]]
            elif f.role == "nested":
                new[f.name] = _replace_names(entry[f.name], hashes)
            elif f.role == "condition":
                new[f.name] = _replace_names([entry[f.name]], hashes, "condition")[0]
        out.append(new)
    return out


def describe(interventions: Sequence[Intervention]) -> list[dict[str, Any]]:
    """A readable spec: kinds and scalar fields, tensors by shape and norm, resources by reference (for result records)."""
    out = []
    for intervention in interventions:
        spec = spec_of(intervention)
        entry: dict[str, Any] = {"kind": spec.name}
        for f in spec.fields:
            value = getattr(intervention, f.name)
            if f.role == "tensor":
                entry[f.name] = {"shape": list(value.shape), "norm": round(float(value.norm()), 6)}
            elif f.role == "scalar":
                plain = _plain(value)
                entry[f.name] = _compact_points(plain) if f.type == "points" else plain
            elif f.role == "resource":
                entry[f.name] = _RESOURCES[f.type].reference(value) or f"<unsaved {f.type}>"
            elif f.role == "condition":
                entry[f.name] = describe([value])[0]
            else:
                entry[f.name] = describe(value)
        out.append(entry)
    return out


def _compact_points(points: list[str]) -> Any:
    """Long point lists shortened for reading: ``"resid_pre/attn_out/mlp_out x 24 layers"``."""
    if len(points) <= 6:
        return points
    sites = sorted({p.split(".")[0] for p in points})
    layers = sorted({int(p.split(".")[1]) for p in points})
    return f"{'/'.join(sites)} at {len(layers)} layers ({layers[0]}..{layers[-1]}), {len(points)} points"


def walk(interventions: Sequence[Intervention]) -> Iterator[Intervention]:
    """Every intervention, nested ones included (depth first)."""
    for intervention in interventions:
        yield intervention
        spec = _BY_CLASS.get(type(intervention))
        if spec is not None:
            for f in spec.fields:
                if f.role == "nested":
                    yield from walk(getattr(intervention, f.name))


# --------------------------------------------------------------------------------------------- short forms


def parse_short_form(text: str, lm: LoadedModel) -> list[Intervention] | None:
    """Resolve ``PREFIX:ARG[:key=value...]`` if PREFIX is a registered short form, else None.

    Options are ``key=value``; a bare value after ARG fills the form's positional options in order
    (``actadd:DIR:2.5`` is ``actadd:DIR:coef=2.5``).
    """
    prefix, sep, rest = text.partition(":")
    if not sep or prefix not in _SHORT_FORMS:
        return None
    form = _SHORT_FORMS[prefix]
    if form.deprecated:
        warnings.warn(f"--steer {prefix}:... is deprecated; {form.deprecated}", DeprecationWarning, stacklevel=2)
    parts = rest.split(":")
    arg, tail = parts[0], parts[1:]
    if not arg:
        raise ConfigError(f"--steer {text!r} names no folder", fix=f"write {form.usage()}")
    options: dict[str, Any] = {}
    bare = list(form.positional)
    for part in tail:
        key, eq, value = part.partition("=")
        if not eq:
            if not bare:
                raise ConfigError(f"--steer {text!r}: {part!r} is not key=value", fix=f"write {form.usage()}")
            key, value = bare.pop(0), part
        if key not in form.options:
            raise ConfigError(f"--steer {text!r}: unknown option {key!r} for {prefix}:", fix=f"{prefix}: takes {', '.join(form.options) or 'no options'}")
        if key in options:
            raise ConfigError(f"--steer {text!r}: option {key!r} is given twice")
        options[key] = check_scalar(prefix, key, form.options[key], _scalar_text(value, form.options[key]))
    return form.resolve(arg, options, lm)


def _scalar_text(text: str, type_: str) -> Any:
    """A CLI option's text as the value its type expects (booleans and integers from words)."""
    if type_ == "bool":
        lowered = text.lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(lowered, text)
    if type_ == "int":
        try:
            return int(text)
        except ValueError:
            return text
    return text


__all__ = [
    "FieldSpec",
    "KindSpec",
    "RESIDUAL_WRITES",
    "ResourceType",
    "ShortForm",
    "check_scalar",
    "check_scalars",
    "condition_spec",
    "conditions",
    "describe",
    "fingerprint",
    "from_spec",
    "kind_spec",
    "kinds",
    "parse_short_form",
    "register_condition",
    "register_kind",
    "register_resource",
    "register_short_form",
    "short_forms",
    "short_forms_help",
    "spec_of",
    "tensor_hash",
    "to_spec",
    "walk",
]
