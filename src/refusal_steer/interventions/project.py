"""Set the projection on a direction to a value: x <- x + (value - x . r) r with r unit-norm.

With ``value`` set to the mean projection of harmful prompts this induces refusal; with the mean of
harmless prompts it is a softer ablation (Arditi et al. 2024, §3; Marks & Tegmark 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from ..errors import ConfigError
from ..hooks import HookCall, HookPoint
from ..models.loaded import LoadedModel
from ._vector import CastCache, as_points, as_vector, check_width
from .positions import PositionSpec, parse_positions, position_mask


@dataclass(frozen=True, eq=False)
class SetProjection:
    """Replace the component of the activation along ``direction`` at ``point`` by ``value``.

    Args:
        direction: a ``(d,)`` vector; stored unit-normalised in float32.
        point: one hook point.
        value: the projection every selected token ends up with.
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
        (point,) = as_points(self.point)
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            raise ConfigError(f"value {self.value!r} is not a number") from None
        object.__setattr__(self, "point", point)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "direction", as_vector(self.direction, name="projection direction", unit=True))
        object.__setattr__(self, "positions", parse_positions(self.positions))

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
