"""ReLU SAE with an L1 penalty weighted by decoder row norms.

Anthropic's April 2024 update ("Circuits Updates - April 2024", training SAEs): the sparsity term is
``sum_i f_i(x) * ||W_dec,i||``, so the decoder norm is not constrained; the input is not centred by
``b_dec``; decoder rows start at norm 0.1 with the encoder as their transpose; the L1 coefficient
ramps up linearly over the first 5% of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .base import Sae, SaeStepOutput, reconstruction_stats
from .config import SaeConfig, _require
from .distributed import fired_anywhere, mean_rows
from .registry import register

if TYPE_CHECKING:
    from .distributed import BatchShard


@dataclass
class ReluL1Config(SaeConfig):
    """Config of :class:`ReluL1Sae`."""

    ARCH: ClassVar[str] = "relu_l1"

    apply_b_dec_to_input: bool = False
    """Subtract b_dec from the input before encoding (off in Anthropic's April 2024 setup)."""
    l1_coefficient: float = 5.0
    """Weight of the decoder-norm-weighted L1 penalty (loss uses summed squared error)."""
    l1_warmup: float = 0.05
    """Fraction of training over which the L1 coefficient ramps linearly from 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.l1_coefficient >= 0, "l1_coefficient", f"must be >= 0, got {self.l1_coefficient}")
        _require(0 <= self.l1_warmup <= 1, "l1_warmup", f"must be in [0, 1], got {self.l1_warmup}")


@register("relu_l1")
class ReluL1Sae(Sae):
    """``f = ReLU(W_enc x + b_enc)``, ``x_hat = W_dec f + b_dec``, loss ``||x - x_hat||^2 + l1 * sum f_i ||W_dec,i||``."""

    config_class = ReluL1Config
    init_decoder_norm = 0.1
    cfg: ReluL1Config

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def training_step(self, x: Tensor, dead: Tensor | None = None, progress: float = 1.0, shard: BatchShard | None = None) -> SaeStepOutput:
        xn = self.normalize_input(x)
        z = torch.relu(self.pre_acts_normalized(xn))
        x_hat = self.decode_normalized(z)
        rec, mse, fvu = reconstruction_stats(xn, x_hat, shard)
        penalty = mean_rows((z * self.W_dec.norm(dim=1)).sum(-1), shard)
        warm = 1.0 if self.cfg.l1_warmup == 0 else min(1.0, progress / self.cfg.l1_warmup)
        loss = rec + self.cfg.l1_coefficient * warm * penalty
        active = z > 0
        return SaeStepOutput(
            loss=loss,
            mse=mse.detach(),
            fvu=fvu.detach(),
            l0=mean_rows(active.sum(-1).float(), shard),
            aux_loss=penalty.detach(),
            fired=fired_anywhere(active.any(0), shard),
        )


__all__ = ["ReluL1Config", "ReluL1Sae"]
