"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders").

Training keeps the ``k * n`` largest (ReLU'd) pre-activations of the whole batch, so L0 averages
``k`` but varies per token. Inference cannot depend on the batch, so a global ``threshold`` is
estimated during training (an exponential moving average of the smallest kept activation, as in
SAELens) and saved with the weights; inference keeps ``pre > threshold`` (a JumpReLU with one
shared threshold). Sparse kernels, unit-norm decoder and AuxK are those of :mod:`.topk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ._sparse import ActiveSet, fast_sort
from .config import _require
from .registry import register
from .topk import TopKConfig, TopKSae


@dataclass
class BatchTopKConfig(TopKConfig):
    """Config of :class:`BatchTopKSae`."""

    ARCH: ClassVar[str] = "batchtopk"

    threshold_momentum: float = 0.99
    """EMA momentum of the inference threshold (new = m * old + (1 - m) * batch minimum)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 <= self.threshold_momentum < 1, "threshold_momentum", f"must be in [0, 1), got {self.threshold_momentum}")


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

    def activation(self, pre: Tensor) -> Tensor:
        thr = max(float(self.threshold), 0.0)
        return pre * (pre.float() > thr).to(pre.dtype)

    def forward(self, x: Tensor):  # type: ignore[override]
        return super(TopKSae, self).forward(x)

    def _select(self, pre: Tensor) -> ActiveSet:
        n, d_sae = pre.shape
        flat = pre.reshape(-1)
        vals, idx = flat.topk(min(self.cfg.k * n, flat.numel()), sorted=False)
        keep = vals > 0
        vals, idx = vals[keep], idx[keep]
        if vals.numel():
            batch_min = vals.min().float()
            m = self.cfg.threshold_momentum
            new = batch_min if float(self.threshold) < 0 else m * self.threshold + (1 - m) * batch_min
            self.threshold.copy_(new)
        idx = fast_sort(idx)
        rows, cols = idx // d_sae, idx % d_sae
        counts = torch.bincount(rows, minlength=n)
        return ActiveSet(rows=rows, cols=cols, offsets=counts.cumsum(0) - counts, n=n, d_sae=d_sae)


__all__ = ["BatchTopKConfig", "BatchTopKSae"]
