"""TopK SAE with the AuxK loss for dead latents (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Only the ``k`` largest pre-activations per token stay active (after a ReLU). Training never builds
the dense ``(n, d_sae)`` latent matrix for the backward pass: the decoder reads the ``k`` active rows
of ``W_dec`` per token and the encoder gradient touches only active columns (see ``_sparse``).
Decoder rows are kept at unit norm after every step. The loss is the batch FVU plus
``aux_coefficient`` times the AuxK loss: the normalised error of reconstructing the residual
``x - x_hat`` from the ``aux_k`` largest pre-activations among dead latents (§A.2). In data-parallel
training both normalisers (the batch's variance, the residual's variance) are the global batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ._sparse import ActiveSet, gather_pre, sparse_decode
from .base import Sae, SaeOutput, SaeStepOutput, reconstruction_stats
from .config import SaeConfig, _require
from .distributed import fired_anywhere
from .registry import register

if TYPE_CHECKING:
    from .distributed import BatchShard


@dataclass
class TopKConfig(SaeConfig):
    """Config of :class:`TopKSae`."""

    ARCH: ClassVar[str] = "topk"

    k: int = 32
    """Active latents per token."""
    aux_k: int | None = None
    """Dead latents used by the AuxK loss (None: d_in // 2, Gao et al. 2024 §A.2)."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. 2024 use 1/32)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.k, int) and 0 < self.k <= self.d_sae, "k", f"must be in [1, d_sae={self.d_sae}], got {self.k!r}")
        if self.aux_k is not None:
            _require(isinstance(self.aux_k, int) and self.aux_k > 0, "aux_k", f"must be a positive integer, got {self.aux_k!r}")
        _require(self.aux_coefficient >= 0, "aux_coefficient", f"must be >= 0, got {self.aux_coefficient}")

    @property
    def effective_aux_k(self) -> int:
        """``aux_k`` with its default resolved."""
        return self.aux_k if self.aux_k is not None else max(1, self.d_in // 2)


@register("topk")
class TopKSae(Sae):
    """``f = TopK(ReLU(W_enc (x - b_dec) + b_enc))``, ``x_hat = W_dec f + b_dec``."""

    config_class = TopKConfig
    cfg: TopKConfig

    def activation(self, pre: Tensor) -> Tensor:
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def forward(self, x: Tensor) -> SaeOutput:  # type: ignore[override]
        """Encode and decode; the decode reads only the ``k`` active decoder rows per token."""
        lead = x.shape[:-1]
        pre = self.pre_acts(x.reshape(-1, self.cfg.d_in))
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        vals = vals.relu()
        x_hat = torch.nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") + self.b_dec
        x_hat = x_hat / self.norm_scale.to(x_hat.dtype)
        z = torch.zeros_like(pre).scatter_(-1, idx, vals)
        return SaeOutput(x_hat=x_hat.reshape(*lead, -1).to(x.dtype), latents=z.reshape(*lead, -1))

    def _select(self, pre: Tensor, progress: float = 1.0, shard: BatchShard | None = None) -> ActiveSet:
        """Active entries of a training batch (no grad); ``progress`` is the fraction of training done.

        Per token, so the same with or without a ``shard``.
        """
        return ActiveSet.from_topk(pre.topk(self.cfg.k, dim=-1, sorted=False).indices, self.cfg.d_sae)

    def training_step(self, x: Tensor, dead: Tensor | None = None, progress: float = 1.0, shard: BatchShard | None = None) -> SaeStepOutput:
        xn = self.normalize_input(x)
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
        with torch.no_grad():
            x_in = xn - self.b_dec if b_dec is not None else xn
            pre = torch.addmm(self.b_enc, x_in, self.W_enc)
        active = self._select(pre, progress, shard)
        vals = gather_pre(x_in, self.W_enc, self.b_enc, pre, active, b_dec).relu()
        x_hat = sparse_decode(vals, self.W_dec, active) + self.b_dec
        _, mse, fvu = reconstruction_stats(xn, x_hat, shard)
        aux = self._auxk_loss(xn - x_hat.detach(), x_in, pre, dead, b_dec, shard)
        loss = fvu + self.cfg.aux_coefficient * aux if aux is not None else fvu
        with torch.no_grad():
            on = vals > 0
            fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
            fired[active.cols[on]] = True
            fired = fired_anywhere(fired, shard)
            l0 = on.sum().float() / x.shape[0] if shard is None else shard.sum(on.sum().float()) / shard.n_total
        zero = torch.zeros((), device=x.device)
        return SaeStepOutput(loss=loss, mse=mse.detach(), fvu=fvu.detach(), l0=l0, aux_loss=(aux if aux is not None else zero).detach(), fired=fired)

    def _auxk_loss(
        self, err: Tensor, x_in: Tensor, pre: Tensor, dead: Tensor | None, b_dec: Tensor | None, shard: BatchShard | None = None
    ) -> Tensor | None:
        if dead is None or self.cfg.aux_coefficient == 0:
            return None
        n_dead = int(dead.sum())
        if n_dead == 0:
            return None
        k_aux = min(self.cfg.effective_aux_k, n_dead)
        with torch.no_grad():
            idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False).indices
        active = ActiveSet.from_topk(idx, self.cfg.d_sae)
        vals = gather_pre(x_in, self.W_enc, self.b_enc, pre, active, b_dec).relu()
        e_hat = sparse_decode(vals, self.W_dec, active)
        err = err.float()
        if shard is not None:  # every shard has the same dead mask, so all of them get here
            return shard.total((e_hat.float() - err).pow(2).sum()) / shard.total_variance(err)
        return (e_hat.float() - err).pow(2).sum() / (err - err.mean(0)).pow(2).sum().clamp_min(1e-12)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Keep decoder rows at unit norm (Gao et al. 2024 §2.1)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


__all__ = ["TopKConfig", "TopKSae"]
