"""Activation addition: x <- x + coef * v at one point (Turner et al. 2023; Arditi et al. 2024, §2.4)."""

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
class Add:
    """Add ``coef * vector`` to the activation at ``point``; the vector keeps its norm (not normalised).

    Args:
        vector: a ``(d,)`` vector, e.g. a difference-in-means refusal direction; stored in float32.
        point: one hook point (``"resid_pre.12"``).
        coef: scale; negative values subtract; must be finite.
        positions: ``"all"`` (default), ``"prompt"``, ``"generated"`` or prompt-token indices.

    Example:
        >>> steer = Add(direction, "resid_pre.12", coef=1.0)  # doctest: +SKIP
    """

    kind: ClassVar[str] = "add"

    vector: Tensor
    point: HookPoint
    coef: float = 1.0
    positions: PositionSpec = "all"
    _scaled: Tensor | None = field(default=None, init=False, repr=False)
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "point", check_scalar(self.kind, "point", "point", self.point))
        object.__setattr__(self, "coef", check_scalar(self.kind, "coef", "float", self.coef))
        object.__setattr__(self, "vector", as_vector(self.vector, name="added vector", unit=False))
        # Scale once here so the hook is a single add.
        object.__setattr__(self, "_scaled", self.vector * self.coef)
        object.__setattr__(self, "positions", check_scalar(self.kind, "positions", "positions", self.positions))

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return (self.point,)

    def validate(self, lm: LoadedModel) -> None:
        check_width(self.vector, self.points, lm, "added vector")

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        delta = self._cast.get(self._scaled, x)
        mask = position_mask(self.positions, call.positions, x.dtype)
        if mask is None:
            return x + delta
        return x.addcmul(mask, delta)


register_kind(Add, [
    FieldSpec("vector", "tensor", doc="the vector added (its norm is kept)"),
    FieldSpec("point", "scalar", "point", doc="one hook point"),
    FieldSpec("coef", "scalar", "float", required=False, doc="scale (negative subtracts)"),
    FieldSpec("positions", "scalar", "positions", required=False, doc="token positions steered"),
], doc="activation addition: x <- x + coef * v at one point (Turner et al. 2023)")
