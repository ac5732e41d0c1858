"""The interface every SAE kind implements, and what they share.

An SAE stores its weights in SAELens's layout (``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in),
``b_enc``, ``b_dec``) plus ``norm_scale``: a scalar applied to inputs inside :meth:`Sae.encode` and
undone inside :meth:`Sae.decode`, so users pass raw activations and get raw reconstructions.
``norm_scale`` is set from data at the start of training so that E||x * scale||^2 = d_in
(Gao et al. 2024, §2.1; SAELens's ``expected_average_only_in``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ShapeMismatchError
from .config import SaeConfig

if TYPE_CHECKING:
    from .distributed import BatchShard


@dataclass(frozen=True)
class SaeOutput:
    """What :meth:`Sae.forward` returns."""

    x_hat: Tensor
    """Reconstruction, same shape and dtype as the input: ``(..., d_in)``."""
    latents: Tensor
    """Dense latent activations: ``(..., d_sae)``."""


@dataclass(frozen=True)
class SaeStepOutput:
    """What one training step returns. All but ``loss`` are detached 0-d tensors (no host sync).

    Given a :class:`~refusal_steer.sae.distributed.BatchShard`, every value is the whole global batch's
    and ``loss``'s gradient is this shard's share of the global loss's gradient.
    """

    loss: Tensor
    """Differentiable total loss (reconstruction + sparsity/auxiliary terms)."""
    mse: Tensor
    """Mean squared error per element, in normalised units."""
    fvu: Tensor
    """Fraction of variance unexplained on this batch."""
    l0: Tensor
    """Mean number of active latents per token."""
    aux_loss: Tensor
    """The sparsity penalty (ReLU-L1, JumpReLU) or the AuxK loss (TopK kinds), before its coefficient."""
    fired: Tensor
    """(d_sae,) bool: which latents were active on at least one token of this batch."""


class Sae(nn.Module, abc.ABC):
    """Base class of every SAE kind. Subclasses set ``config_class`` and implement
    :meth:`activation` and :meth:`training_step`.

    Example:
        >>> from refusal_steer.sae import build_sae
        >>> from refusal_steer.sae.topk import TopKConfig
        >>> sae = build_sae(TopKConfig(d_in=8, d_sae=32, k=4))
        >>> out = sae(torch.randn(2, 5, 8))
        >>> out.x_hat.shape, int((out.latents > 0).sum(-1).max())
        (torch.Size([2, 5, 8]), 4)
    """

    config_class: ClassVar[type[SaeConfig]] = SaeConfig
    #: Norm of each decoder row at initialisation (Anthropic, April 2024 update: 0.1 for ReLU-L1).
    init_decoder_norm: ClassVar[float] = 1.0

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter
    norm_scale: Tensor

    def __init__(self, cfg: SaeConfig) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        dt = cfg.torch_dtype
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))
        self.register_buffer("norm_scale", torch.ones((), dtype=torch.float32))
        self.reset_parameters()

    # ----------------------------------------------------------------- initialisation
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit decoder directions scaled to ``init_decoder_norm``; encoder = decoder transpose.

        Args:
            generator: RNG to draw from (the global torch RNG when None).
        """
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator, dtype=torch.float32)
        w = w / w.norm(dim=1, keepdim=True) * self.init_decoder_norm
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, b_dec_init: str = "geometric_median") -> None:
        """Set ``norm_scale`` and ``b_dec`` from a sample of raw activations.

        Args:
            x: (n, d_in) raw activations (a few thousand rows are plenty).
            b_dec_init: ``geometric_median`` (Bricken et al. 2023), ``mean`` or ``zeros``.
        """
        x = self._check_input(x).reshape(-1, self.cfg.d_in).float()
        if self.cfg.normalize == "expected_norm":
            mean_sq = x.pow(2).sum(-1).mean().clamp_min(1e-12)
            self.norm_scale.fill_(float((self.cfg.d_in / mean_sq).sqrt()))
        xn = x * self.norm_scale
        if b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(xn))
        elif b_dec_init == "mean":
            self.b_dec.copy_(xn.mean(0))
        elif b_dec_init != "zeros":
            from ..errors import ConfigError

            raise ConfigError(f"b_dec_init must be geometric_median, mean or zeros, got {b_dec_init!r}")

    # ----------------------------------------------------------------- inference
    def _check_input(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ShapeMismatchError(
                f"activations have width {x.shape[-1]} but the SAE expects d_in={self.cfg.d_in}",
                fix="use an SAE trained on this model and hook point (check 'refusal-steer sae info DIR')",
            )
        return x

    def normalize_input(self, x: Tensor) -> Tensor:
        """Raw activations -> the SAE's normalised units (and the SAE's dtype)."""
        return self._check_input(x).to(self.W_enc.dtype) * self.norm_scale.to(self.W_enc.dtype)

    def pre_acts_normalized(self, xn: Tensor) -> Tensor:
        """Encoder pre-activations of already-normalised input."""
        if self.cfg.apply_b_dec_to_input:
            xn = xn - self.b_dec
        return xn @ self.W_enc + self.b_enc

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations ``(..., d_sae)`` of raw activations ``(..., d_in)``."""
        return self.pre_acts_normalized(self.normalize_input(x))

    @abc.abstractmethod
    def activation(self, pre: Tensor) -> Tensor:
        """Pre-activations -> dense latents (the kind's nonlinearity), inference behaviour."""

    def encode(self, x: Tensor) -> Tensor:
        """Raw activations ``(..., d_in)`` -> latents ``(..., d_sae)``."""
        return self.activation(self.pre_acts(x))

    def decode_normalized(self, z: Tensor) -> Tensor:
        """Latents -> reconstruction in normalised units."""
        return z @ self.W_dec + self.b_dec

    def decode(self, z: Tensor) -> Tensor:
        """Latents ``(..., d_sae)`` -> raw-unit reconstruction ``(..., d_in)``."""
        return self.decode_normalized(z) / self.norm_scale.to(self.W_dec.dtype)

    def forward(self, x: Tensor) -> SaeOutput:  # type: ignore[override]
        """Encode and decode; ``x_hat`` has the input's dtype."""
        z = self.encode(x)
        return SaeOutput(x_hat=self.decode(z).to(x.dtype), latents=z)

    # ----------------------------------------------------------------- training
    @abc.abstractmethod
    def training_step(self, x: Tensor, dead: Tensor | None = None, progress: float = 1.0, shard: BatchShard | None = None) -> SaeStepOutput:
        """Loss and statistics of one batch of raw activations ``(n, d_in)``.

        Args:
            x: raw activations.
            dead: (d_sae,) bool mask of latents the trainer considers dead (for AuxK).
            progress: fraction of training done, in [0, 1] (for coefficient warm-ups).
            shard: when ``x`` is this process's rows of a global batch (data-parallel training): batch-level
                statistics are then combined over every shard, so that the all-reduced sum of the shards'
                gradients is the gradient of the one-process loss on the global batch.
        """

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Hook run after each optimizer step (e.g. renormalise decoder rows, clamp thresholds)."""

    def extra_state_tensors(self) -> dict[str, Tensor]:
        """Kind-specific tensors saved with the weights (e.g. a threshold)."""
        return {}

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.W_enc.device


# --------------------------------------------------------------------- shared helpers
def reconstruction_stats(xn: Tensor, x_hat: Tensor, shard: BatchShard | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum_sq_loss, mse, fvu)`` of a batch in normalised units.

    ``sum_sq_loss`` is the squared error summed over dimensions, averaged over tokens (the
    reconstruction term used by every kind's loss). With a ``shard``, all three are the global batch's
    (FVU divides by the global batch's total variance), with this shard's share of the gradient.
    """
    err = (x_hat - xn).float()
    sq = err.pow(2).sum(-1)
    if shard is not None:
        sq_total = shard.total(sq.sum())
        rec = sq_total / shard.n_total
        return rec, rec / xn.shape[-1], sq_total / shard.total_variance(xn.float())
    total_var = (xn.float() - xn.float().mean(0)).pow(2).sum().clamp_min(1e-12)
    return sq.mean(), sq.mean() / xn.shape[-1], sq.sum() / total_var


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Geometric median of ``(n, d)`` points by Weiszfeld's algorithm.

    Example:
        >>> geometric_median(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])).shape
        torch.Size([2])
    """
    y = points.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (points - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * points).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * y.norm().clamp_min(1e-8):
            return y_new
        y = y_new
    return y


__all__ = ["Sae", "SaeOutput", "SaeStepOutput", "reconstruction_stats", "geometric_median"]
