"""The saved result of latent discovery (``FDIR/features.json``) and the steers built from it.

``features.json`` holds the SAEs (by reference and point), every hyper-parameter, the ranked global set,
the per-prompt sets, the baselines' sets (CosSim, ActDiff, attribution without the cosine pool), each
selected latent's max activation, and the calibration: the bypass's K* and multiplier and the induction's
set value, chosen on train/validation prompts. The short form ``latents:FDIR`` (registered here, the
layer that owns the format) turns it into one :class:`~refusal_steer.sae.latent_steers.LatentClamp` per SAE:

- ``latents:FDIR``: the calibrated bypass (the global top-K* latents multiplied by the calibrated c);
- ``latents:FDIR:induce``: the calibrated induction (the global set set to the calibrated value);
- ``scale=C`` / ``value=V`` / ``k=N`` / ``set=cossim|actdiff|attribution`` / ``positions=P`` override them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import ConfigError, CorruptFileError
from ..hooks import HookPoint, Intervention
from ..interventions import ShortForm, register_short_form
from ..models.loaded import LoadedModel
from ..sae.base import Sae
from ..sae.io import load_sae
from ..sae.latent_steers import LatentClamp

FEATURES_FILENAME = "features.json"
FORMAT = "refusal-steer/features"
VERSION = 1
SET_NAMES = ("selected", "cossim", "actdiff", "attribution")


@dataclass(frozen=True)
class LatentRef:
    """One latent: which SAE (by name in ``features.json``), its index, and the score it was ranked by."""

    sae: str
    index: int
    score: float = 0.0

    def key(self) -> tuple[str, int]:
        return (self.sae, self.index)


@dataclass
class FeatureSet:
    """What ``features.json`` holds (see the module docstring)."""

    model: str
    method: str
    saes: dict[str, dict[str, Any]]
    """``{name: {"source": folder or shipped name, "point": "resid_pre.14", "d_sae": 8192}}``."""
    skip_tokens: int
    sets: dict[str, list[LatentRef]]
    """Ranked global sets: ``selected`` (the method's) and the baselines computed from the same prompts."""
    per_prompt: list[list[LatentRef]] = field(default_factory=list)
    max_activation: dict[str, float] = field(default_factory=dict)
    """``"name:index" -> max activation on the harmful train prompts`` (SAE units)."""
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    """``"name:index" -> {"cosine":..., "attribution":..., "actdiff":...}`` for every latent in any set."""
    calibration: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, Any] = field(default_factory=dict)

    def ranked(self, which: str = "selected", k: int | None = None) -> list[LatentRef]:
        if which not in self.sets:
            raise ConfigError(f"features.json has no latent set {which!r}", fix=f"use one of {sorted(self.sets)}")
        latents = self.sets[which]
        return latents if k is None else latents[:k]

    def to_json(self) -> dict[str, Any]:
        def refs(items: list[LatentRef]) -> list[dict[str, Any]]:
            return [{"sae": r.sae, "point": self.saes[r.sae]["point"], "index": r.index, "score": r.score, "method": self.method,
                     **self.details.get(f"{r.sae}:{r.index}", {})} for r in items]

        return {"format": FORMAT, "version": VERSION, "model": self.model, "method": self.method, "saes": self.saes,
                "skip_tokens": self.skip_tokens, "hyperparameters": self.hyperparameters, "calibration": self.calibration,
                "global": refs(self.sets["selected"]), "sets": {name: refs(items) for name, items in self.sets.items()},
                "per_prompt": [[[r.sae, r.index, r.score] for r in items] for items in self.per_prompt],
                "max_activation": self.max_activation, "details": self.details, "prompts": self.prompts}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = FEATURES_FILENAME) -> FeatureSet:
        if data.get("format") != FORMAT:
            raise CorruptFileError(f"{where} is not a refusal-steer features file (format {data.get('format')!r})",
                                   fix="point at a folder written by 'refusal-steer features find'")
        try:
            sets = {name: [LatentRef(e["sae"], int(e["index"]), float(e["score"])) for e in items] for name, items in data["sets"].items()}
            per_prompt = [[LatentRef(s, int(i), float(v)) for s, i, v in items] for items in data.get("per_prompt", [])]
            return cls(model=data["model"], method=data["method"], saes=data["saes"], skip_tokens=int(data["skip_tokens"]), sets=sets,
                       per_prompt=per_prompt, max_activation=data.get("max_activation", {}), details=data.get("details", {}),
                       calibration=data.get("calibration", {}), hyperparameters=data.get("hyperparameters", {}), prompts=data.get("prompts", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{where} is malformed: {exc!r}", fix="re-run 'refusal-steer features find'") from exc

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FEATURES_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_json())
        return path

    def point(self, sae: str) -> HookPoint:
        return HookPoint.parse(self.saes[sae]["point"])


def load_features(folder: str | Path) -> FeatureSet:
    """Read ``FDIR/features.json`` (or the file itself)."""
    path = Path(folder).expanduser()
    if path.is_dir() or path.suffix != ".json":
        path = path / FEATURES_FILENAME
    if not path.is_file():
        raise ConfigError(f"no features file at {path}", fix="run 'refusal-steer features find ... --out FDIR' first")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}", fix="re-run 'refusal-steer features find'") from exc
    return FeatureSet.from_json(data, where=str(path))


def load_feature_saes(features: FeatureSet, lm: LoadedModel | None = None, names: list[str] | None = None) -> dict[str, Sae]:
    """The SAEs a feature set names, loaded (on ``lm``'s device, checked against its width)."""
    out = {}
    for name in names if names is not None else list(features.saes):
        source = features.saes[name]["source"]
        if lm is None:
            out[name] = load_sae(source)
        else:
            out[name] = load_sae(source, d_model=lm.d_model, device=lm.device)
    return out


def clamp_steer(features: FeatureSet, latents: list[LatentRef], *, mode: str, value: float, saes: dict[str, Sae] | None = None,
                lm: LoadedModel | None = None, positions: Any = "all") -> list[Intervention]:
    """One :class:`LatentClamp` per SAE holding any of ``latents`` (in the SAE order of ``features.json``)."""
    by_sae: dict[str, list[int]] = defaultdict(list)
    for ref in latents:
        by_sae[ref.sae].append(ref.index)
    names = [name for name in features.saes if name in by_sae]
    loaded = saes if saes is not None else load_feature_saes(features, lm, names)
    return [LatentClamp(loaded[name], features.point(name), latents=tuple(by_sae[name]), mode=mode, value=value, positions=positions,
                        skip_tokens=features.skip_tokens) for name in names]


def bypass_steer(features: FeatureSet, *, k: int | None = None, scale: float | None = None, which: str = "selected",
                 saes: dict[str, Sae] | None = None, lm: LoadedModel | None = None, positions: Any = "all") -> list[Intervention]:
    """The calibrated bypass: the top-K* latents of the set multiplied by c (both overridable)."""
    bypass = features.calibration.get("bypass", {})
    k = int(k if k is not None else bypass.get("k", features.hyperparameters.get("k", 20)))
    scale = float(scale if scale is not None else bypass.get("scale", 0.0))
    return clamp_steer(features, features.ranked(which, k), mode="scale", value=scale, saes=saes, lm=lm, positions=positions)


def induce_steer(features: FeatureSet, *, k: int | None = None, value: float | None = None, which: str = "selected",
                 saes: dict[str, Sae] | None = None, lm: LoadedModel | None = None, positions: Any = "all") -> list[Intervention]:
    """The calibrated induction: the global set set to a constant (both overridable)."""
    induce = features.calibration.get("induce", {})
    if value is None and "value" not in induce:
        raise ConfigError("this features file has no calibrated induction value", fix="give one: latents:FDIR:induce:value=V")
    k = int(k if k is not None else induce.get("k", features.hyperparameters.get("k", 20)))
    value = float(value if value is not None else induce["value"])
    return clamp_steer(features, features.ranked(which, k), mode="set", value=value, saes=saes, lm=lm, positions=positions)


def resolve_latents(folder: str, options: dict[str, Any], lm: LoadedModel) -> list[Intervention]:
    """``latents:FDIR[:induce][:k=N][:scale=C | :value=V][:set=NAME][:positions=P]``."""
    features = load_features(folder)
    mode = options.get("mode", "bypass")
    if mode not in ("bypass", "induce"):
        raise ConfigError(f"latents:{folder}:{mode}: unknown mode {mode!r}", fix="write latents:FDIR (bypass) or latents:FDIR:induce")
    if "scale" in options and "value" in options:
        raise ConfigError("latents: give scale= (multiply) or value= (set), not both")
    which = options.get("set", "selected")
    common = dict(k=options.get("k"), which=which, lm=lm, positions=options.get("positions", "all"))
    if "value" in options or mode == "induce" and "scale" not in options:
        return induce_steer(features, value=options.get("value"), **common)
    return bypass_steer(features, scale=options.get("scale"), **common)


register_short_form(ShortForm(
    "latents", resolve_latents,
    {"mode": "str", "k": "int", "scale": "float", "value": "float", "set": "str", "positions": "positions"}, positional=("mode",),
    help="clamp the SAE latents of FDIR/features.json: the calibrated bypass, or ':induce' (scale=, value=, k=, set= override)"))


__all__ = ["FEATURES_FILENAME", "FeatureSet", "LatentRef", "bypass_steer", "clamp_steer", "induce_steer", "load_feature_saes",
           "load_features", "resolve_latents"]
