"""Operator presets: named steers, parsed and validated once at startup, chosen per request by name.

A preset is any ``--steer`` value of the steer language (a short form such as ``ablate:DIR``, a steer
file, ``none``), parsed by :func:`refusal_steer.interventions.parse_steer`, the same parser ``eval``
and ``generate`` use, so a steer measured in evaluation is exactly the steer served. Requests only
ever name a preset: they can never send a path or a tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError, RefusalSteerError
from ..hooks import Intervention
from ..interventions import fingerprint, parse_steer
from ..models.loaded import LoadedModel

BASE_PRESET = "none"
"""The unsteered model: what the bare model id (no ``@preset``) serves."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class Preset:
    """A named steer served as ``MODEL@NAME``.

    ``spec`` is the operator's steer string (kept server-side: responses carry only the name and the
    fingerprint, never paths).
    """

    name: str
    spec: str
    interventions: tuple[Intervention, ...] = field(repr=False)
    fingerprint: str

    def info(self) -> dict[str, str]:
        """What a response says about the steer it ran under."""
        return {"preset": self.name, "fingerprint": self.fingerprint}


def parse_preset_arg(text: str) -> tuple[str, str]:
    """Split one ``--preset NAME=STEER`` value into ``(name, steer)``.

    Example:
        >>> parse_preset_arg("ablated=ablate:runs/demo/direction")
        ('ablated', 'ablate:runs/demo/direction')
    """
    name, sep, steer = text.partition("=")
    name, steer = name.strip(), steer.strip()
    if not sep or not steer:
        raise ConfigError(f"cannot read --preset {text!r}", fix="write NAME=STEER, e.g. --preset ablated=ablate:runs/demo/direction")
    if not _NAME.match(name):
        raise ConfigError(f"--preset name {name!r} is not allowed",
                          fix="use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit (no '@')")
    if name == BASE_PRESET:
        raise ConfigError(f"--preset name {BASE_PRESET!r} is reserved for the unsteered base model",
                          fix="pick another name; the bare model id already serves the unsteered model")
    return name, steer


def build_preset(lm: LoadedModel, name: str, steer: str) -> Preset:
    """Parse and validate ``steer`` against ``lm`` (the same parser as ``--steer``) and fingerprint it."""
    try:
        interventions = tuple(parse_steer(steer, lm))
    except RefusalSteerError as exc:
        raise type(exc)(f"--preset {name}: {exc.message}", fix=exc.fix) from exc
    return Preset(name=name, spec=steer, interventions=interventions, fingerprint=fingerprint(list(interventions)))


def load_presets(lm: LoadedModel, presets: Sequence[str] | Mapping[str, str]) -> dict[str, Preset]:
    """Every preset the server offers, the unsteered base (``"none"``) first.

    Args:
        presets: ``["NAME=STEER", ...]`` as given on the command line, or a ``{name: steer}`` mapping.

    Example:
        >>> load_presets(lm, ["ablated=ablate:runs/demo/direction"])  # doctest: +SKIP
        {'none': Preset(name='none', ...), 'ablated': Preset(name='ablated', ...)}
    """
    pairs = [parse_preset_arg(p) for p in presets] if not isinstance(presets, Mapping) else \
        [parse_preset_arg(f"{name}={steer}") for name, steer in presets.items()]
    out = {BASE_PRESET: build_preset(lm, BASE_PRESET, "none")}
    for name, steer in pairs:
        if name in out:
            raise ConfigError(f"--preset {name!r} is given twice", fix="give each preset name once")
        out[name] = build_preset(lm, name, steer)
    return out
