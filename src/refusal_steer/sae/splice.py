"""Splice an SAE into the model: replace the activation at a hook point by the SAE's reconstruction.

With ``keep_error=True`` the error term ``x - sae(x)`` is added back, so the model's output is
unchanged but every downstream quantity is a function of the SAE's latents plus the error (Yeo et
al. 2025 keep the error term when intervening on latents; Marks et al. 2024 treat it as a node).
Without it, the model runs on the reconstruction alone (what "CE loss recovered" measures).

The kind ``sae_splice`` is registered here, with the SAE as a *resource* field (a folder or a shipped
name, hashed by content for fingerprints), because the SAE format belongs to this layer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from ..hooks import HookCall, HookPoint
from ..interventions.positions import PositionSpec, where_steered
from ..interventions.registry import FieldSpec, ResourceType, check_scalars, register_kind, register_resource
from ..models.loaded import LoadedModel
from .base import Sae
from .io import check_width, load_sae

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SaeSplice:
    """Replace ``x`` by ``sae(x)`` (plus ``x - sae(x)`` when ``keep_error``) at ``point``; padding is left alone.

    Args:
        sae: the SAE; its ``d_in`` must equal the width at ``point``.
        point: hook point (``"resid_pre.12"`` or a :class:`~refusal_steer.hooks.HookPoint`).
        keep_error: add the reconstruction error back (output unchanged up to rounding).
        skip_tokens: leave each prompt's first tokens alone (a chat template's fixed prefix the SAE was
            not trained on, see :func:`refusal_steer.sae.corpus.template_prefix_length`); counted from the
            true start of the prompt, so a shared prefix computed once is skipped exactly as unshared.
        positions: which tokens are spliced (``"all"`` by default).

    Example:
        >>> with apply(lm, [SaeSplice(sae, "resid_pre.12", keep_error=False)]):  # doctest: +SKIP
        ...     logits = lm.model(**batch).logits
    """

    kind: ClassVar[str] = "sae_splice"

    sae: Sae
    point: HookPoint | str
    keep_error: bool = True
    skip_tokens: int = 0
    positions: PositionSpec = "all"
    _hp: HookPoint = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_scalars(self)
        object.__setattr__(self, "_hp", self.point)

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return (self._hp,)

    def validate(self, lm: LoadedModel) -> None:
        self._hp.validate(lm)
        check_width(self.sae, self._hp.width(lm), source=f"the SAE spliced at {self._hp}")
        if self.sae.cfg.point is not None and self.sae.cfg.point != str(self._hp):
            logger.warning("SAE trained at %s is spliced at %s", self.sae.cfg.point, self._hp)

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        x_hat = self.sae(x).x_hat
        out = x_hat + (x - x_hat) if self.keep_error else x_hat
        return where_steered(out, x, call.positions, self.positions, skip_prompt=self.skip_tokens)


def sae_content_hash(sae: Sae) -> str:
    """sha256 of an SAE's config and weights (float32 bytes in name order): the same SAE hashes the same anywhere."""
    digest = hashlib.sha256(json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(sae.state_dict().items()):
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def _load_resource(reference: str, base_dir: Path | None, lm: LoadedModel | None) -> Sae:
    path = Path(reference).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if lm is None:
        return load_sae(path if path.exists() else reference)
    return load_sae(path if path.exists() else reference, d_model=lm.d_model, device=lm.device)


def _reference(sae: Sae) -> str | None:
    return getattr(sae, "source", None)


register_resource(ResourceType(name="sae", load=_load_resource, reference=_reference, content_hash=sae_content_hash))

register_kind(SaeSplice, [
    FieldSpec("sae", "resource", "sae", doc="an SAE folder (ours, SAELens, Gemma Scope .npz) or a shipped name"),
    FieldSpec("point", "scalar", "point", doc="where it is spliced"),
    FieldSpec("keep_error", "scalar", "bool", required=False, doc="add the reconstruction error back"),
    FieldSpec("skip_tokens", "scalar", "int", required=False, minimum=0, doc="leave each prompt's first tokens unspliced"),
    FieldSpec("positions", "scalar", "positions", required=False, doc="token positions spliced"),
], doc="SAE splice: x <- sae(x) (+ the error term when keep_error)")


__all__ = ["SaeSplice", "sae_content_hash"]
