"""What a gate reads: a score per token from the activation at the gate's point.

A *condition* is a small frozen value with ``score(x) -> s``: ``x`` is ``(..., d)`` at the gate's point,
``s`` is ``(...)`` float32, one number per token. The gate (:mod:`.gate`) aggregates the scores over each
prompt and compares the result with its threshold. Conditions are registered values of the steer
language (:func:`~refusal_steer.interventions.registry.register_condition`): they are saved inside a
gate's entry as ``condition: {kind: cosine, direction: t0}`` and hashed into its fingerprint.

- :class:`Projection` (``projection``): ``x . r`` with ``r`` unit-norm (the scalar projection, in the
  activation's units; a difference-in-means direction's projection separates harmful from harmless
  prompts, Arditi et al. 2024, §2);
- :class:`Cosine` (``cosine``): ``x . r / |x|``, in [-1, 1] (the condition of IBM's CAST, Lee et al. 2024);
- :class:`Probe` (``probe``): a linear probe's logit ``x . w + b`` (``w`` kept as given, not normalised);
- ``sae_latent`` (an SAE latent's activation) is registered by :mod:`refusal_steer.sae.latent_condition`,
  because the SAE format belongs to that layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from ..hooks import HookPoint
from ..models.loaded import LoadedModel
from ._vector import CastCache, as_vector, check_width
from .registry import FieldSpec, check_scalar, register_condition


@runtime_checkable
class Condition(Protocol):
    """The contract of a gate condition.

    ``bounds`` is the range a threshold can meaningfully take (``(-1, 1)`` for a cosine), or None.
    """

    kind: str
    bounds: Any

    def score(self, x: Tensor) -> Tensor: ...

    def validate(self, lm: LoadedModel, point: HookPoint) -> None: ...


@dataclass(frozen=True, eq=False)
class Projection:
    """The scalar projection ``x . r`` of the activation onto ``direction`` (stored unit-norm).

    Example:
        >>> Projection(torch.tensor([3.0, 4.0])).score(torch.tensor([[1.0, 1.0]]))  # doctest: +SKIP
        tensor([1.4000])
    """

    kind: ClassVar[str] = "projection"
    bounds: ClassVar[tuple[float, float] | None] = None

    direction: Tensor
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", as_vector(self.direction, name="projection.direction", unit=True))

    def score(self, x: Tensor) -> Tensor:
        x = x.float()
        return x @ self._cast.get(self.direction, x)

    def validate(self, lm: LoadedModel, point: HookPoint) -> None:
        check_width(self.direction, (point,), lm, "projection.direction")


@dataclass(frozen=True, eq=False)
class Cosine:
    """The cosine similarity ``x . r / |x|`` between the activation and ``direction``, in [-1, 1]."""

    kind: ClassVar[str] = "cosine"
    bounds: ClassVar[tuple[float, float] | None] = (-1.0, 1.0)

    direction: Tensor
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", as_vector(self.direction, name="cosine.direction", unit=True))

    def score(self, x: Tensor) -> Tensor:
        x = x.float()
        return (x @ self._cast.get(self.direction, x)) / x.norm(dim=-1).clamp_min(1e-12)

    def validate(self, lm: LoadedModel, point: HookPoint) -> None:
        check_width(self.direction, (point,), lm, "cosine.direction")


@dataclass(frozen=True, eq=False)
class Probe:
    """A linear probe's logit ``x . weight + bias`` (e.g. one trained on refusal latents or raw activations)."""

    kind: ClassVar[str] = "probe"
    bounds: ClassVar[tuple[float, float] | None] = None

    weight: Tensor
    bias: float = 0.0
    _cast: CastCache = field(default_factory=CastCache, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", as_vector(self.weight, name="probe.weight", unit=False))
        object.__setattr__(self, "bias", check_scalar(self.kind, "bias", "float", self.bias))

    def score(self, x: Tensor) -> Tensor:
        x = x.float()
        return x @ self._cast.get(self.weight, x) + self.bias

    def validate(self, lm: LoadedModel, point: HookPoint) -> None:
        check_width(self.weight, (point,), lm, "probe.weight")


register_condition(Projection, [FieldSpec("direction", "tensor", doc="the direction (stored unit-norm)")],
                   doc="scalar projection x . r onto a unit direction")
register_condition(Cosine, [FieldSpec("direction", "tensor", doc="the direction")],
                   doc="cosine similarity x . r / |x| (in [-1, 1])")
register_condition(Probe, [
    FieldSpec("weight", "tensor", doc="the probe's weight vector (kept as given)"),
    FieldSpec("bias", "scalar", "float", required=False, doc="the probe's bias (0)"),
], doc="linear probe logit x . w + b")


__all__ = ["Condition", "Cosine", "Probe", "Projection"]
