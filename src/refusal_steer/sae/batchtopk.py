"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders").

Training keeps the ``k * n`` largest (ReLU'd) pre-activations of the whole batch, so L0 averages
``k`` but varies per token. Inference cannot depend on the batch, so a global ``threshold`` is
estimated during training from the smallest kept activation of each batch and saved with the
weights; inference keeps ``pre > threshold`` (a JumpReLU with one shared threshold). SAELens keeps
an exponential moving average of that minimum; on a short run the average still remembers the
first, very different batches (147 steps at momentum 0.99 left L0 at 18.7 instead of 32 on the
default model), so here the threshold is the plain mean of the batch minima over the last
``threshold_window`` of training, when the weights barely move, and an EMA before that.
Sparse kernels, unit-norm decoder and AuxK are those of :mod:`.topk`.

In data-parallel training the selection stays the global batch's: the ``k * n`` largest values of
the whole batch are among the union of each shard's own ``k * n`` largest, so the shards gather
those candidates, find the global cut-off and each keeps its entries at or above it. The only
difference from one process is at exact ties with the cut-off value, which are all kept
(one process keeps an arbitrary subset of them); float activations practically never tie there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ._sparse import ActiveSet, fast_sort
from .config import _require
from .registry import register
from .topk import TopKConfig, TopKSae

if TYPE_CHECKING:
    from .distributed import BatchShard


@dataclass
class BatchTopKConfig(TopKConfig):
    """Config of :class:`BatchTopKSae`."""

    ARCH: ClassVar[str] = "batchtopk"

    threshold_momentum: float = 0.99
    """EMA momentum of the inference threshold before the final window (new = m * old + (1 - m) * batch minimum)."""
    threshold_window: float = 0.2
    """Final fraction of training over which the threshold is the plain mean of the batch minima (0: EMA throughout)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 <= self.threshold_momentum < 1, "threshold_momentum", f"must be in [0, 1), got {self.threshold_momentum}")
        _require(0 <= self.threshold_window <= 1, "threshold_window", f"must be in [0, 1], got {self.threshold_window}")


@register("batchtopk")
class BatchTopKSae(TopKSae):
    """TopK over the whole batch in training; a saved threshold at inference."""

    config_class = BatchTopKConfig
    cfg: BatchTopKConfig
    threshold: Tensor

    def __init__(self, cfg: BatchTopKConfig) -> None:
        super().__init__(cfg)
        # -1 marks "not estimated yet"; float32 whatever the SAE dtype.
        self.register_buffer("threshold", torch.full((), -1.0, dtype=torch.float32))
        # Batch minima averaged so far inside the final window; training state only (the trainer checkpoints it).
        self.register_buffer("threshold_count", torch.zeros((), dtype=torch.long), persistent=False)

    def activation(self, pre: Tensor) -> Tensor:
        thr = max(float(self.threshold), 0.0)
        return pre * (pre.float() > thr).to(pre.dtype)

    def forward(self, x: Tensor):  # type: ignore[override]
        return super(TopKSae, self).forward(x)

    def _select(self, pre: Tensor, progress: float = 1.0, shard: BatchShard | None = None) -> ActiveSet:
        n, d_sae = pre.shape
        flat = pre.reshape(-1)
        if shard is not None:
            idx = self._select_global(flat, progress, shard)
        else:
            vals, idx = flat.topk(min(self.cfg.k * n, flat.numel()), sorted=False)
            keep = vals > 0
            vals, idx = vals[keep], idx[keep]
            if vals.numel():
                self._update_threshold(vals.min().float(), progress)
            idx = fast_sort(idx)
        rows, cols = idx // d_sae, idx % d_sae
        counts = torch.bincount(rows, minlength=n)
        return ActiveSet(rows=rows, cols=cols, offsets=counts.cumsum(0) - counts, n=n, d_sae=d_sae)

    def _select_global(self, flat: Tensor, progress: float, shard: BatchShard) -> Tensor:
        """Sorted flat indices of this shard's entries among the ``k * n_total`` largest positive ones of the global batch."""
        budget = self.cfg.k * shard.n_total
        candidates = shard.gather(flat.topk(min(budget, flat.numel()), sorted=False).values)
        top = candidates.topk(min(budget, candidates.numel()), sorted=False).values
        top = top[top > 0]
        if not top.numel():
            return flat.new_zeros(0, dtype=torch.long)
        cut = top.min()  # the same value on every shard, and the one a single process would find
        self._update_threshold(cut.float(), progress)
        return (flat >= cut).nonzero().squeeze(1)

    @torch.no_grad()
    def _update_threshold(self, batch_min: Tensor, progress: float) -> None:
        if progress >= 1 - self.cfg.threshold_window:
            self.threshold_count += 1
            weight = 1.0 / float(self.threshold_count)  # running mean over the window; its first batch restarts it
            self.threshold.copy_((1 - weight) * self.threshold + weight * batch_min)
        elif float(self.threshold) < 0:
            self.threshold.copy_(batch_min)
        else:
            m = self.cfg.threshold_momentum
            self.threshold.copy_(m * self.threshold + (1 - m) * batch_min)


__all__ = ["BatchTopKConfig", "BatchTopKSae"]
