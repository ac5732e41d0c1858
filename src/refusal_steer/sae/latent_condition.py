"""A gate condition on one SAE latent: fire when the latent's activation over the prompt passes a threshold.

The condition ``sae_latent`` (:class:`SaeLatent`) scores each token by ``sae.encode(x)[latent]``, in the
SAE's own units (its input normalisation, see :mod:`.base`), as the latent tables of ``features.json``
report them. O'Brien et al. 2024 make latent clamping conditional on a refusal latent's activation so
that safe prompts pay less; a :class:`refusal_steer.interventions.Gate` with this condition does that.
It is registered here, with the SAE as a resource (a folder or a shipped name, hashed by content),
because the SAE format belongs to this layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..hooks import HookPoint
from ..interventions.registry import FieldSpec, check_scalar, register_condition
from ..models.loaded import LoadedModel
from .base import Sae
from .io import check_width
from .latent_steers import _check_latents


@dataclass(frozen=True, eq=False)
class SaeLatent:
    """The activation of SAE latent ``latent`` (SAE units) as a gate's per-token score.

    Example:
        >>> gate = Gate(SaeLatent(load_sae("default"), latent=42), "resid_pre.14", threshold=3.0, reduce="max",
        ...             steer=[LatentClamp(sae, "resid_pre.14", latents=(42,), mode="set", value=8.0)])  # doctest: +SKIP
    """

    kind: ClassVar[str] = "sae_latent"
    bounds: ClassVar[tuple[float, float] | None] = None

    sae: Sae
    latent: int

    def __post_init__(self) -> None:
        latent = check_scalar(self.kind, "latent", "int", self.latent)
        _check_latents(self.sae, (latent,), self.kind)
        object.__setattr__(self, "latent", latent)

    def score(self, x: Tensor) -> Tensor:
        return self.sae.encode(x)[..., self.latent].float()

    def validate(self, lm: LoadedModel, point: HookPoint) -> None:
        check_width(self.sae, point.width(lm), source=f"the SAE whose latent {self.latent} a gate reads at {point}")


register_condition(SaeLatent, [
    FieldSpec("sae", "resource", "sae", doc="an SAE folder or shipped name"),
    FieldSpec("latent", "scalar", "int", doc="the latent index"),
], doc="an SAE latent's activation (SAE units)")


__all__ = ["SaeLatent"]
