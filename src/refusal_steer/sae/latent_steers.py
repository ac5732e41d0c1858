"""Steering through SAE latents: clamp chosen latents (error term kept) or add one latent's decoder row.

- :class:`LatentClamp` (kind ``latent_clamp``): encode ``x``, multiply the chosen latents by ``value``
  (``mode="scale"``: Yeo et al.'s bypass, c = -1...-3) or set them to ``value`` (``mode="set"``: their
  induction, and O'Brien et al.'s clamp), and decode keeping the SAE error term,
  ``x' = dec(f') + (x - dec(f))`` (Yeo et al. 2025, §3). Because the decoder is linear this is computed as
  ``x + (f'_S - f_S) W_dec[S] / norm_scale`` over the chosen set S only, which is the same number up to
  float rounding and never adds the SAE's own reconstruction error to the stream.
- :class:`LatentAdd` (kind ``latent_add``): Kapros 2025's bottom-up steerer, ``x + coef * max_act * d_i``
  where ``d_i`` is latent i's decoder row in the model's units (``W_dec[i] / norm_scale``).

Latent values are in the SAE's own units (its input normalisation, see :mod:`.base`), as
``sae.encode`` returns them. Both kinds take the SAE as a resource (a folder or a shipped name), so a
steer file refers to it by name and its fingerprint hashes its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeMismatchError
from ..hooks import HookCall, HookPoint
from ..interventions.positions import PositionSpec, position_mask, where_steered
from ..interventions.registry import FieldSpec, check_scalars, register_kind
from ..models.loaded import LoadedModel
from .base import Sae
from .io import check_width

ClampMode = Literal["scale", "set"]


def _check_latents(sae: Sae, latents: tuple[int, ...], kind: str) -> None:
    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise ShapeMismatchError(f"{kind}: latent(s) {bad} out of range for an SAE with {sae.cfg.d_sae} latents",
                                 fix="take latent indices from the features.json written with this SAE ('refusal-steer features show FDIR')")


def decoder_rows(sae: Sae, latents: tuple[int, ...] | list[int]) -> Tensor:
    """The chosen latents' decoder rows in the model's units, ``(len(latents), d_in)`` float32."""
    rows = sae.W_dec.detach()[list(latents)].float()
    return rows / sae.norm_scale.float()


@dataclass(frozen=True, eq=False)
class LatentClamp:
    """Scale (``mode="scale"``) or set (``mode="set"``) SAE latents at ``point``, keeping the error term.

    Args:
        sae: the SAE (its ``d_in`` must equal the width at ``point``).
        point: its hook point, e.g. ``"resid_pre.14"``.
        latents: latent indices.
        mode: ``"scale"`` multiplies them by ``value``; ``"set"`` sets them to ``value`` (SAE units).
        value: the factor or the value; finite.
        positions: tokens steered (``"all"`` by default), as every other kind.
        skip_tokens: leave each prompt's first tokens alone (the chat template's fixed prefix the SAE was
            not trained on; its first token is an attention sink with an enormous norm).
        keep_error: keep the SAE error term (default; the model is unchanged where latents are unchanged).
            With ``False`` the activation is replaced by the clamped reconstruction.

    Example:
        >>> bypass = LatentClamp(load_sae("default"), "resid_pre.14", latents=(12, 99), value=-3.0)  # doctest: +SKIP
        >>> with apply(lm, [bypass]):  # doctest: +SKIP
        ...     completions = generate(lm, ["How do I pick a lock?"])
    """

    kind: ClassVar[str] = "latent_clamp"

    sae: Sae
    point: HookPoint | str
    latents: tuple[int, ...]
    mode: ClampMode = "scale"
    value: float = 0.0
    positions: PositionSpec = "all"
    skip_tokens: int = 0
    keep_error: bool = True
    _hp: HookPoint = field(init=False, repr=False)
    _index: Tensor = field(init=False, repr=False)
    _rows: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_scalars(self)
        object.__setattr__(self, "_hp", self.point)
        latents = self.latents
        if self.mode not in ("scale", "set"):
            raise ConfigError(f"latent_clamp.mode must be 'scale' or 'set', got {self.mode!r}", fix="write mode: scale (multiply) or mode: set (constant)")
        _check_latents(self.sae, latents, self.kind)
        object.__setattr__(self, "_index", torch.tensor(latents, dtype=torch.long, device=self.sae.device))
        object.__setattr__(self, "_rows", decoder_rows(self.sae, latents).to(self.sae.device))

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return (self._hp,)

    def validate(self, lm: LoadedModel) -> None:
        self._hp.validate(lm)
        check_width(self.sae, self._hp.width(lm), source=f"the SAE whose latents are clamped at {self._hp}")

    def clamped(self, f: Tensor) -> Tensor:
        """The new values of the chosen latents given their current values ``f`` (``(..., len(latents))``)."""
        return f * self.value if self.mode == "scale" else torch.full_like(f, self.value)

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        z = self.sae.encode(x)
        f = z.index_select(-1, self._index)
        if self.keep_error:
            delta = ((self.clamped(f) - f) @ self._rows).to(x.dtype)
            out = x + delta
        else:
            z = z.index_copy(-1, self._index, self.clamped(f))
            out = self.sae.decode(z).to(x.dtype)
        return where_steered(out, x, call.positions, self.positions, skip_prompt=self.skip_tokens)


@dataclass(frozen=True, eq=False)
class LatentAdd:
    """Add ``coef * max_activation * d_latent`` at ``point`` (Kapros 2025's SAE steerer).

    Args:
        sae: the SAE; ``d_latent`` is its decoder row for ``latent`` in the model's units.
        point: its hook point.
        latent: the latent index.
        max_activation: the latent's largest activation on the prompts it was found on (SAE units).
        coef: the coefficient; finite (negative subtracts).
        positions: tokens steered.
    """

    kind: ClassVar[str] = "latent_add"

    sae: Sae
    point: HookPoint | str
    latent: int
    max_activation: float = 1.0
    coef: float = 1.0
    positions: PositionSpec = "all"
    _hp: HookPoint = field(init=False, repr=False)
    _delta: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_scalars(self)
        object.__setattr__(self, "_hp", self.point)
        latent = self.latent
        _check_latents(self.sae, (latent,), self.kind)
        object.__setattr__(self, "_delta", decoder_rows(self.sae, (latent,))[0] * (self.coef * self.max_activation))

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return (self._hp,)

    @property
    def vector(self) -> Tensor:
        """What is added, in the model's units (float32)."""
        return self._delta

    def validate(self, lm: LoadedModel) -> None:
        self._hp.validate(lm)
        check_width(self.sae, self._hp.width(lm), source=f"the SAE whose latent is added at {self._hp}")

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        delta = self._delta.to(device=x.device, dtype=x.dtype)
        mask = position_mask(self.positions, call.positions, x.dtype)
        return x + delta if mask is None else x.addcmul(mask, delta)


register_kind(LatentClamp, [
    FieldSpec("sae", "resource", "sae", doc="an SAE folder or shipped name"),
    FieldSpec("point", "scalar", "point", doc="the SAE's hook point"),
    FieldSpec("latents", "scalar", "ints", doc="latent indices"),
    FieldSpec("mode", "scalar", "str", required=False, doc="scale (multiply by value) or set (to value)"),
    FieldSpec("value", "scalar", "float", required=False, doc="the factor (scale) or the value in SAE units (set)"),
    FieldSpec("positions", "scalar", "positions", required=False, doc="token positions steered"),
    FieldSpec("skip_tokens", "scalar", "int", required=False, minimum=0, doc="leave each prompt's first tokens alone"),
    FieldSpec("keep_error", "scalar", "bool", required=False, doc="keep the SAE error term (default true)"),
], doc="SAE latent clamp: f_S <- value * f_S (scale) or value (set); x' = dec(f') + (x - dec(f))")

register_kind(LatentAdd, [
    FieldSpec("sae", "resource", "sae", doc="an SAE folder or shipped name"),
    FieldSpec("point", "scalar", "point", doc="the SAE's hook point"),
    FieldSpec("latent", "scalar", "int", doc="the latent index"),
    FieldSpec("max_activation", "scalar", "float", required=False, doc="the latent's max activation (SAE units)"),
    FieldSpec("coef", "scalar", "float", required=False, doc="coefficient"),
    FieldSpec("positions", "scalar", "positions", required=False, doc="token positions steered"),
], doc="SAE latent addition: x <- x + coef * max_activation * W_dec[latent] (Kapros 2025)")


__all__ = ["ClampMode", "LatentAdd", "LatentClamp", "decoder_rows"]
