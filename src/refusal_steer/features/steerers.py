"""Kapros 2025's steerers for the top-down vs bottom-up comparison, built from registered kinds.

- ``topdown``: the refusal direction ablated at every residual write (``ablate:DIR``);
- ``saem3``: the SAE-reconstructed direction ``dec(mean enc(h+)) - dec(mean enc(h-))`` at the direction's
  position, ablated the same way (:func:`saem3_direction` + :func:`~refusal_steer.interventions.all_layers_ablation`);
- ``sae``: one latent's decoder row x its max activation x a coefficient added at the SAE's point
  (:func:`latent_add_steer`, a :class:`~refusal_steer.sae.latent_steers.LatentAdd`);
- ``hybrid``: the direction ablated at the SAE's point plus the latent addition (:func:`hybrid_steer`);
- ``hybrid2``: ``hybrid`` plus the top-down ablation at every residual write (:func:`hybrid2_steer`).

Each returns a list of registered interventions, so each saves as a steer file and has a fingerprint.
"""

from __future__ import annotations

from torch import Tensor

from ..hooks import HookPoint, Intervention
from ..interventions import Ablate, all_layers_ablation
from ..models.loaded import LoadedModel
from ..sae.base import Sae
from ..sae.latent_steers import LatentAdd


def saem3_direction(sae: Sae, harmful_acts: Tensor, harmless_acts: Tensor) -> Tensor:
    """``dec(mean enc(h+)) - dec(mean enc(h-))`` (the decoder bias cancels): ``(d_in,)`` float32 in the model's units.

    Args:
        sae: the SAE at the direction's layer.
        harmful_acts, harmless_acts: ``(n, d_in)`` activations at the direction's point and position.
    """
    mean_pos = sae.encode(harmful_acts.to(sae.device)).float().mean(0)
    mean_neg = sae.encode(harmless_acts.to(sae.device)).float().mean(0)
    return (sae.decode(mean_pos) - sae.decode(mean_neg)).float().detach().cpu()


def latent_add_steer(sae: Sae, point: HookPoint | str, latent: int, max_activation: float, coef: float) -> list[Intervention]:
    """Kapros's ``sae`` steerer: add ``coef * max_activation * d_latent`` at ``point``."""
    return [LatentAdd(sae, point, latent=latent, max_activation=max_activation, coef=coef)]


def hybrid_steer(direction: Tensor, sae: Sae, point: HookPoint | str, latent: int, max_activation: float, coef: float) -> list[Intervention]:
    """Kapros's ``hybrid``: ablate ``direction`` at ``point`` and add the latent there."""
    return [Ablate(direction, (HookPoint.parse(point),)), *latent_add_steer(sae, point, latent, max_activation, coef)]


def hybrid2_steer(direction: Tensor, lm: LoadedModel, sae: Sae, point: HookPoint | str, latent: int, max_activation: float,
                  coef: float) -> list[Intervention]:
    """Kapros's ``hybrid2``: ``hybrid`` plus the direction ablated at every residual write."""
    return [all_layers_ablation(direction, lm), *latent_add_steer(sae, point, latent, max_activation, coef)]


__all__ = ["hybrid2_steer", "hybrid_steer", "latent_add_steer", "saem3_direction"]
