"""Directional ablation: remove the component along a direction, x <- x - (x . r) r with r unit-norm.

Arditi et al. (2024, §2.4) ablate the refusal direction everywhere the residual stream is written:
at the input of every block and at the output of every attention and MLP branch
(:func:`residual_writes`), which is equivalent to orthogonalising the weights that write to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from ..hooks import HookCall, HookPoint, residual_writes
from ..models.loaded import LoadedModel
from ._vector import CastCache, as_vector, check_width
from .positions import PositionSpec, position_mask
from .registry import FieldSpec, check_scalar, register_kind


def project_out(x: Tensor, r: Tensor, mask: Tensor | None) -> Tensor:
    """``x - (x . r) r`` where ``mask`` (``(batch, seq, 1)``, or None for everywhere) is 1; ``r`` unit-norm, ``x``'s dtype.

    The one implementation of ablation's arithmetic: :class:`Ablate` and the trainable ablation of
    :mod:`refusal_steer.directions.optimize` both call it, so they cannot drift apart.
    """
    projection = (x @ r).unsqueeze(-1)
    if mask is not None:
        projection = projection * mask
    return x.addcmul(projection, r, value=-1)


@dataclass(frozen=True, eq=False)
class Ablate:
    """Project ``direction`` out of the activation at every point in ``points``.

    Args:
        direction: a ``(d,)`` vector; stored unit-normalised in float32.
        points: hook points (values or strings like ``"resid_pre.12"``).
        positions: ``"all"`` (default), ``"prompt"``, ``"generated"`` or prompt-token indices.

    Example:
        >>> ablation = Ablate(torch.randn(896), points=residual_writes(lm))  # doctest: +SKIP
        >>> with apply(lm, [ablation]):  # doctest: +SKIP
        ...     completions = generate(lm, ["How do I pick a lock?"])
    """

    kind: ClassVar[str] = "ablate"

    direction: Tensor
    points: tuple[HookPoint, ...]
    positions: PositionSpec = "all"
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", as_vector(self.direction, name="ablation direction", unit=True))
        object.__setattr__(self, "points", check_scalar(self.kind, "points", "points", self.points))
        object.__setattr__(self, "positions", check_scalar(self.kind, "positions", "positions", self.positions))

    def validate(self, lm: LoadedModel) -> None:
        check_width(self.direction, self.points, lm, "ablation direction")

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        return project_out(x, self._cast.get(self.direction, x), position_mask(self.positions, call.positions, x.dtype))


register_kind(Ablate, [
    FieldSpec("direction", "tensor", doc="the direction removed (stored unit-norm)"),
    FieldSpec("points", "scalar", "points", doc=f"hook points, or '{'residual_writes'}' for every residual write of the model"),
    FieldSpec("positions", "scalar", "positions", required=False, doc="token positions steered"),
], doc="directional ablation: x <- x - (x . r) r at every point (Arditi et al. 2024)")


def all_layers_ablation(direction: Tensor, lm: LoadedModel, positions: PositionSpec = "all") -> Ablate:
    """Directional ablation at every residual write of ``lm`` (the top-down refusal bypass)."""
    return Ablate(direction, residual_writes(lm), positions=positions)


__all__ = ["Ablate", "all_layers_ablation", "project_out", "residual_writes"]
