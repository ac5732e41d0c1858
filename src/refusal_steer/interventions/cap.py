"""Projection cap (capped ablation): lower the projection on a direction to a ceiling where it exceeds it,
x <- x - max(0, x . r - c) r.

Directional ablation (:mod:`.ablate`) sets the projection to 0 for every token, harmless ones too, and
that shift is what costs KL on harmless prompts. Capping only removes the part *above* what harmless
prompts carry (the ceiling ``c`` of each point, e.g. the mean harmless projection at that layer), so
activations already at a harmless level are left alone. It is ``torch.clamp(x . r, max=c)`` on one
coordinate; like "activation capping", it is not linear, so unlike ablation it cannot be baked into weights.

This kind was called ``clamp`` before; "clamp" now means SAE latent clamping (the SAE papers' word), and
steer files with ``kind: clamp`` of this shape still load as ``cap``, with a deprecation warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from ..errors import ConfigError, ShapeMismatchError
from ..hooks import HookCall, HookPoint
from ..models.loaded import LoadedModel
from ._vector import CastCache, as_vector, check_width
from .positions import PositionSpec, position_mask
from .registry import FieldSpec, check_scalar, register_kind


@dataclass(frozen=True, eq=False)
class ProjectionCap:
    """Cap the component of the activation along ``direction`` at ``ceilings[i]`` at ``points[i]``.

    Args:
        direction: a ``(d,)`` vector; stored unit-normalised in float32.
        points: hook points (values or strings like ``"resid_pre.12"``).
        ceilings: one ceiling per point (or one number for all): the largest projection left in place.
        positions: ``"all"`` (default), ``"prompt"``, ``"generated"`` or prompt-token indices.

    Example:
        >>> cap = ProjectionCap(direction, ["resid_pre.10", "resid_pre.11"], ceilings=[0.4, 0.6])  # doctest: +SKIP
        >>> with apply(lm, [cap]):  # doctest: +SKIP
        ...     completions = generate(lm, ["How do I pick a lock?"])
    """

    kind: ClassVar[str] = "cap"

    direction: Tensor
    points: tuple[HookPoint, ...]
    ceilings: tuple[float, ...] | float
    positions: PositionSpec = "all"
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)
    _by_point: dict[HookPoint, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", as_vector(self.direction, name="cap direction", unit=True))
        object.__setattr__(self, "points", check_scalar(self.kind, "points", "points", self.points))
        object.__setattr__(self, "positions", check_scalar(self.kind, "positions", "positions", self.positions))
        ceilings = check_scalar(self.kind, "ceilings", "floats", self.ceilings)
        if len(ceilings) == 1 and len(self.points) > 1 and not isinstance(self.ceilings, (list, tuple)):
            ceilings = ceilings * len(self.points)
        if len(ceilings) != len(self.points):
            raise ShapeMismatchError(f"cap has {len(self.points)} points but {len(ceilings)} ceilings", fix="give one ceiling per point")
        if len(set(self.points)) != len(self.points):
            raise ConfigError("cap lists a point twice", fix="give each point once, with its ceiling")
        object.__setattr__(self, "ceilings", ceilings)
        object.__setattr__(self, "_by_point", dict(zip(self.points, ceilings)))

    def validate(self, lm: LoadedModel) -> None:
        check_width(self.direction, self.points, lm, "cap direction")

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        r = self._cast.get(self.direction, x)
        excess = ((x @ r) - self._by_point[call.point]).clamp_min(0).unsqueeze(-1)
        mask = position_mask(self.positions, call.positions, x.dtype)
        if mask is not None:
            excess = excess * mask
        return x.addcmul(excess, r, value=-1)


register_kind(ProjectionCap, [
    FieldSpec("direction", "tensor", doc="the direction capped (stored unit-norm)"),
    FieldSpec("points", "scalar", "points", doc="hook points"),
    FieldSpec("ceilings", "scalar", "floats", doc="one ceiling per point: the largest projection left in place"),
    FieldSpec("positions", "scalar", "positions", required=False, doc="token positions steered"),
], doc="projection cap: x <- x - max(0, x . r - c) r (capped ablation)", aliases=("clamp",))
