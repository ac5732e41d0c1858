"""Set the projection on a direction to a value: x <- x + (value - x . r) r with r unit-norm.

With ``value`` set to the mean projection of harmful prompts this induces refusal; with the mean of
harmless prompts it is a softer ablation (Arditi et al. 2024, §3; Marks & Tegmark 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from ..hooks import HookCall, HookPoint
from ..models.loaded import LoadedModel
from ._vector import CastCache, as_vector, check_width
from .positions import PositionSpec, position_mask
from .registry import FieldSpec, check_scalar, register_kind


@dataclass(frozen=True, eq=False)
class SetProjection:
    """Replace the component of the activation along ``direction`` at ``point`` by ``value``.

    Args:
        direction: a ``(d,)`` vector; stored unit-normalised in float32.
        point: one hook point.
        value: the projection every selected token ends up with (finite).
        positions: ``"all"`` (default), ``"prompt"``, ``"generated"`` or prompt-token indices.

    Example:
        >>> induce = SetProjection(direction, "resid_pre.12", value=8.0)  # doctest: +SKIP
    """

    kind: ClassVar[str] = "set_projection"

    direction: Tensor
    point: HookPoint
    value: float
    positions: PositionSpec = "all"
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "point", check_scalar(self.kind, "point", "point", self.point))
        object.__setattr__(self, "value", check_scalar(self.kind, "value", "float", self.value))
        object.__setattr__(self, "direction", as_vector(self.direction, name="projection direction", unit=True))
        object.__setattr__(self, "positions", check_scalar(self.kind, "positions", "positions", self.positions))

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return (self.point,)

    def validate(self, lm: LoadedModel) -> None:
        check_width(self.direction, self.points, lm, "projection direction")

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        r = self._cast.get(self.direction, x)
        change = (self.value - x @ r).unsqueeze(-1)
        mask = position_mask(self.positions, call.positions, x.dtype)
        if mask is not None:
            change = change * mask
        return x.addcmul(change, r)


register_kind(SetProjection, [
    FieldSpec("direction", "tensor", doc="the direction (stored unit-norm)"),
    FieldSpec("point", "scalar", "point", doc="one hook point"),
    FieldSpec("value", "scalar", "float", doc="the projection every steered token ends up with"),
    FieldSpec("positions", "scalar", "positions", required=False, doc="token positions steered"),
], doc="set the projection on a direction: x <- x + (value - x . r) r")
