"""Splice an SAE into the model: replace the activation at a hook point by the SAE's reconstruction.

With ``keep_error=True`` the error term ``x - sae(x)`` is added back, so the model's output is
unchanged but every downstream quantity is a function of the SAE's latents plus the error (Yeo et
al. 2025 keep the error term when intervening on latents; Marks et al. 2024 treat it as a node).
Without it, the model runs on the reconstruction alone (what "CE loss recovered" measures).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..hooks import HookCall, HookPoint
from ..sae.base import Sae
from ..sae.io import check_width

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SaeSplice:
    """Replace ``x`` by ``sae(x)`` (plus ``x - sae(x)`` when ``keep_error``) at ``point``; padding is left alone.

    Args:
        sae: the SAE; its ``d_in`` must equal the width at ``point``.
        point: hook point (``"resid_pre.12"`` or a :class:`~refusal_steer.hooks.HookPoint`).
        keep_error: add the reconstruction error back (output unchanged up to rounding).
        skip_tokens: leave each sequence's first tokens alone (a chat template's fixed prefix the SAE
            was not trained on, see :func:`refusal_steer.sae.corpus.template_prefix_length`).

    Example:
        >>> with apply(lm, [SaeSplice(sae, "resid_pre.12", keep_error=False)]):  # doctest: +SKIP
        ...     logits = lm.model(**batch).logits
    """

    sae: Sae
    point: HookPoint | str
    keep_error: bool = True
    skip_tokens: int = 0
    _hp: HookPoint = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hp", HookPoint.parse(self.point))
        object.__setattr__(self, "point", self._hp)

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
        pad = call.positions.padding
        if pad is not None and pad.shape == x.shape[:2] and bool(pad.any()):
            out = torch.where(pad.unsqueeze(-1), x, out)
        if self.skip_tokens > 0:
            out = torch.where(prefix_mask(x, pad, self.skip_tokens).unsqueeze(-1), x, out)
        return out


def prefix_mask(x: Tensor, padding: Tensor | None, skip_tokens: int) -> Tensor:
    """(batch, seq) True on each row's first ``skip_tokens`` real tokens (and on padding before them).

    A decoding step (one position, past the prompt) has no prefix positions.
    """
    batch, seq = x.shape[:2]
    if seq == 1:
        return torch.zeros(batch, seq, dtype=torch.bool, device=x.device)
    if padding is not None and padding.shape == (batch, seq):
        from ..batching import position_ids

        index = position_ids(~padding)  # padding gets 0, so it counts as prefix, as documented
    else:
        index = torch.arange(seq, device=x.device).expand(batch, seq)
    return index < skip_tokens


__all__ = ["SaeSplice", "prefix_mask"]
