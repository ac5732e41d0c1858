"""Directional ablation: remove the component along a direction, x <- x - (x . r) r with r unit-norm.

Arditi et al. (2024, §2.4) ablate the refusal direction everywhere the residual stream is written:
at the input of every block and at the output of every attention and MLP branch
(:func:`residual_writes`), which is equivalent to orthogonalising the weights that write to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from ..hooks import HookCall, HookPoint, Site
from ..models.loaded import LoadedModel
from ._vector import CastCache, as_points, as_vector, check_width
from .positions import PositionSpec, parse_positions, position_mask


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
        object.__setattr__(self, "points", as_points(self.points))
        object.__setattr__(self, "positions", parse_positions(self.positions))

    def validate(self, lm: LoadedModel) -> None:
        check_width(self.direction, self.points, lm, "ablation direction")

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        r = self._cast.get(self.direction, x)
        projection = (x @ r).unsqueeze(-1)
        mask = position_mask(self.positions, call.positions, x.dtype)
        if mask is not None:
            projection = projection * mask
        return x.addcmul(projection, r, value=-1)


def residual_writes(lm: LoadedModel, layers: Iterable[int] | None = None) -> tuple[HookPoint, ...]:
    """Every point where the residual stream is written: ``resid_pre``, ``attn_out``, ``mlp_out`` of each layer.

    Ablating at ``resid_pre`` of every layer plus every branch output removes the direction from the
    whole residual stream, including the final one read by the unembedding (Arditi et al. 2024, §2.4).
    """
    chosen: Sequence[int] = range(lm.n_layers) if layers is None else list(layers)
    return tuple(HookPoint(site, layer) for layer in chosen for site in (Site.RESID_PRE, Site.ATTN_OUT, Site.MLP_OUT))


def all_layers_ablation(direction: Tensor, lm: LoadedModel, positions: PositionSpec = "all") -> Ablate:
    """Directional ablation at every residual write of ``lm`` (the top-down refusal bypass)."""
    return Ablate(direction, residual_writes(lm), positions=positions)
