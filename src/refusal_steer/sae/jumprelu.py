"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders"); the architecture of Gemma Scope.

``f_i = ReLU(z_i) * H(z_i - theta_i)`` with a learned per-latent threshold ``theta`` (kept in float32
whatever the SAE dtype). The ReLU is what Gemma Scope and SAELens compute (``JumpReLUSAE.encode``):
for ``theta >= 0`` it changes nothing, but a negative threshold (loaded from a file) would otherwise
pass negative pre-activations in ``(theta, 0]``. Training and inference use the same :func:`jumprelu`.
The loss is ``||x - x_hat||^2 + l0_coefficient * ||f||_0``; the step function has no gradient, so
``theta`` learns through straight-through estimators with a rectangle kernel of width ``bandwidth``
(§3, eqs. 11-12), both taken at the pre-activation ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from .base import Sae, SaeStepOutput, reconstruction_stats
from .config import SaeConfig, _require
from .distributed import fired_anywhere, mean_rows
from .registry import register

if TYPE_CHECKING:
    from .distributed import BatchShard


@dataclass
class JumpReluConfig(SaeConfig):
    """Config of :class:`JumpReluSae`."""

    ARCH: ClassVar[str] = "jumprelu"

    l0_coefficient: float = 1.0
    """Weight of the L0 penalty (the loss uses summed squared error in normalised units)."""
    bandwidth: float = 0.05
    """Width of the rectangle kernel of the straight-through estimators."""
    init_threshold: float = 0.1
    """Initial threshold of every latent."""
    init_l0: float | None = None
    """If set, training starts every threshold at the value that lets about this many latents fire per
    token on the first batch (instead of ``init_threshold``): thresholds move by about one learning
    rate per step, so on a short token budget a threshold started far from its working range never
    gets there (from 0.1 on the default model, 49 steps leave L0 near 2,000)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.l0_coefficient >= 0, "l0_coefficient", f"must be >= 0, got {self.l0_coefficient}")
        _require(self.bandwidth > 0, "bandwidth", f"must be > 0, got {self.bandwidth}")
        _require(self.init_threshold > 0, "init_threshold", f"must be > 0, got {self.init_threshold}")
        _require(self.init_l0 is None or 0 < self.init_l0 < self.d_sae, "init_l0", f"must be in (0, d_sae), got {self.init_l0}")


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def jumprelu(pre: Tensor, threshold: Tensor) -> Tensor:
    """``ReLU(pre) * H(pre - threshold)``: Gemma Scope's and SAELens's JumpReLU, in ``pre``'s dtype.

    The comparison runs in float32 (a bf16 pre-activation against a float32 threshold, as Gemma Scope
    keeps it).

    Example:
        >>> jumprelu(torch.tensor([-0.5, 0.2, 0.6]), torch.tensor([-1.0, 0.5, 0.5]))
        tensor([0.0000, 0.0000, 0.6000])
    """
    return torch.relu(pre) * (pre.float() > threshold).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    """:func:`jumprelu` with straight-through gradients (eq. 11, with the ReLU):
    d/dz = H(z - theta) H(z), d/dtheta = -(ReLU(theta) / eps) K((z - theta) / eps).

    ``ReLU(theta)`` is the height of the jump at ``z = theta`` (none when ``theta <= 0``); ``z`` is the
    raw pre-activation, so a pre-activation far below zero never enters a small threshold's estimate.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return jumprelu(z, theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_z = grad * ((z > theta) & (z > 0)).to(grad.dtype)
        g_t = (-(theta.clamp_min(0) / eps) * _rectangle((z - theta) / eps) * grad).reshape(-1, theta.shape[-1]).sum(0)
        return g_z, g_t, None


class _Step(torch.autograd.Function):
    """``H(z - theta)``; d/dz = 0, d/dtheta = -(1 / eps) K((z - theta) / eps) (eq. 12)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_t = (-(1.0 / eps) * _rectangle((z - theta) / eps) * grad).reshape(-1, theta.shape[-1]).sum(0)
        return None, g_t, None


@register("jumprelu")
class JumpReluSae(Sae):
    """``f = ReLU(z) * H(z - theta)`` with ``z = W_enc (x - b_dec) + b_enc``, ``x_hat = W_dec f + b_dec``."""

    config_class = JumpReluConfig
    cfg: JumpReluConfig

    def __init__(self, cfg: JumpReluConfig) -> None:
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.init_threshold, dtype=torch.float32))

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, b_dec_init: str = "geometric_median") -> None:
        """As :meth:`Sae.initialize_from_data`, then (with ``init_l0``) thresholds at the matching pre-activation quantile."""
        super().initialize_from_data(x, b_dec_init)
        if self.cfg.init_l0 is None:
            return
        sample = x.reshape(-1, self.cfg.d_in)[: max(1, (1 << 24) // self.cfg.d_sae)]  # kthvalue over <= 16M values
        pre = self.pre_acts_normalized(self.normalize_input(sample)).float().flatten()
        rank = int(round((1 - self.cfg.init_l0 / self.cfg.d_sae) * pre.numel()))
        theta = pre.kthvalue(min(max(rank, 1), pre.numel())).values
        self.threshold.fill_(float(theta.clamp_min(1e-6)))

    def activation(self, pre: Tensor) -> Tensor:
        return jumprelu(pre, self.threshold)

    def training_step(self, x: Tensor, dead: Tensor | None = None, progress: float = 1.0, shard: BatchShard | None = None) -> SaeStepOutput:
        xn = self.normalize_input(x)
        pre = self.pre_acts_normalized(xn).float()
        f = _JumpReLU.apply(pre, self.threshold, self.cfg.bandwidth)
        x_hat = self.decode_normalized(f.to(self.W_dec.dtype))
        rec, mse, fvu = reconstruction_stats(xn, x_hat, shard)
        l0_soft = mean_rows(_Step.apply(pre, self.threshold, self.cfg.bandwidth).sum(-1), shard)
        loss = rec + self.cfg.l0_coefficient * l0_soft
        active = f > 0
        return SaeStepOutput(
            loss=loss, mse=mse.detach(), fvu=fvu.detach(), l0=l0_soft.detach(), aux_loss=l0_soft.detach(),
            fired=fired_anywhere(active.any(0), shard),
        )

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Keep thresholds positive: at ``theta <= 0`` the JumpReLU is a plain ReLU and reconstruction gives theta no gradient."""
        self.threshold.clamp_(min=1e-6)


__all__ = ["JumpReluConfig", "JumpReluSae", "jumprelu"]
