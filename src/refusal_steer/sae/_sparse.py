"""Sparse encoder/decoder kernels for the TopK-style SAEs (private).

Only ``k`` latents per token are active, so the decoder reads ``k`` rows of ``W_dec`` per token
(``embedding_bag``) instead of a dense ``(n, d_sae) @ (d_sae, d_in)`` matmul, and the encoder's
backward pass touches only the selected columns of ``W_enc``. Both weight gradients are computed as
"transposed" embedding bags: the active entries are grouped by latent (one sort per step) and each
latent's gradient row is a weighted sum of token vectors. This removes four of the five dense
matmuls of a dense TopK step; the encoder's forward matmul is the only one left.

Active entries are kept in a flat layout: ``cols`` (nnz,) latent ids grouped by token, ``offsets``
(n,) the start of each token's entries, ``rows`` (nnz,) each entry's token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_MODE_SUM = 0


@dataclass
class ActiveSet:
    """The active (token, latent) pairs of a batch, in flat layout, grouped by token."""

    rows: Tensor
    """(nnz,) token index of each active entry (non-decreasing)."""
    cols: Tensor
    """(nnz,) latent index of each active entry."""
    offsets: Tensor
    """(n,) start of each token's entries in ``rows``/``cols``."""
    n: int
    """Number of tokens."""
    d_sae: int
    """Number of latents."""
    _by_latent: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_topk(cls, indices: Tensor, d_sae: int) -> ActiveSet:
        """From a ``(n, k)`` index tensor (every token has exactly ``k`` entries)."""
        n, k = indices.shape
        rows = torch.arange(n, device=indices.device).repeat_interleave(k)
        offsets = torch.arange(n, device=indices.device) * k
        return cls(rows=rows, cols=indices.reshape(-1), offsets=offsets, n=n, d_sae=d_sae)

    @classmethod
    def from_mask(cls, mask: Tensor) -> ActiveSet:
        """From a boolean ``(n, d_sae)`` mask of active entries (any count per token)."""
        n, d_sae = mask.shape
        rows, cols = mask.nonzero(as_tuple=True)
        counts = mask.sum(dim=1)
        offsets = counts.cumsum(0) - counts
        return cls(rows=rows, cols=cols, offsets=offsets, n=n, d_sae=d_sae)

    def by_latent(self) -> tuple[Tensor, Tensor]:
        """``(perm, latent_offsets)``: entries reordered by latent, and each latent's start (cached)."""
        if self._by_latent is None:
            if self.cols.is_cuda:
                perm = torch.argsort(self.cols, stable=True)
            else:
                # torch's multi-threaded CPU sort is ~100x slower than numpy's on 2 cores (measured).
                perm = torch.from_numpy(np.argsort(self.cols.numpy(), kind="stable"))
            counts = torch.bincount(self.cols, minlength=self.d_sae)
            self._by_latent = (perm, counts.cumsum(0) - counts)
        return self._by_latent


def fast_sort(t: Tensor) -> Tensor:
    """Sorted copy of a 1-D integer tensor (numpy on CPU: torch's 2-thread sort is ~100x slower there)."""
    if t.is_cuda:
        return t.sort().values
    return torch.from_numpy(np.sort(t.numpy(), kind="stable"))


def _bag_sum(indices: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)


class _GatherPre(torch.autograd.Function):
    """Values of the encoder pre-activations at the active entries, with a sparse backward.

    Forward takes the pre-activations already computed (without grad) and gathers them; backward
    turns the gradient of those ``nnz`` values into gradients of ``W_enc`` (only active columns
    are non-zero), ``b_enc`` and, if needed, the encoder input.
    """

    @staticmethod
    def forward(
        ctx: Any, x_in: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, pre: Tensor, active: ActiveSet  # noqa: N803
    ) -> Tensor:
        ctx.save_for_backward(x_in, W_enc)
        ctx.active = active
        return pre[active.rows, active.cols]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_in, W_enc = ctx.saved_tensors  # noqa: N806
        a: ActiveSet = ctx.active
        grad = grad.contiguous()
        g_x = g_w = g_b = g_bdec = None
        if ctx.needs_input_grad[0]:
            g_x = _bag_sum(a.cols, W_enc.t().contiguous(), a.offsets, grad)
        if ctx.needs_input_grad[1]:
            perm, lat_off = a.by_latent()
            g_w = _bag_sum(a.rows[perm], x_in.to(grad.dtype), lat_off, grad[perm]).t().to(W_enc.dtype)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            g_b = torch.zeros(a.d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, a.cols, grad)
        if ctx.needs_input_grad[3]:
            # x_in = x - b_dec, so dL/db_dec = -sum_n dL/dx_in[n] = -W_enc @ dL/db_enc (no (n, d_in) tensor needed).
            g_bdec = -(W_enc @ g_b.to(W_enc.dtype))
        return g_x, g_w, g_b, g_bdec, None, None


class _SparseDecode(torch.autograd.Function):
    """``sum_j vals[j] * W_dec[cols[j]]`` per token, with gradients for ``vals`` and ``W_dec``."""

    @staticmethod
    def forward(ctx: Any, vals: Tensor, W_dec: Tensor, active: ActiveSet) -> Tensor:  # noqa: N803
        out, offset2bag, _, _ = torch.embedding_bag(W_dec, active.cols, active.offsets, False, _MODE_SUM, False, vals, False, None)
        ctx.save_for_backward(vals, W_dec, offset2bag)
        ctx.active = active
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        vals, W_dec, offset2bag = ctx.saved_tensors  # noqa: N806
        a: ActiveSet = ctx.active
        grad = grad.contiguous()
        g_v = g_w = None
        if ctx.needs_input_grad[0]:
            g_v = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, W_dec, a.cols, a.offsets, offset2bag, _MODE_SUM, -1
            )
        if ctx.needs_input_grad[1]:
            perm, lat_off = a.by_latent()
            g_w = _bag_sum(a.rows[perm], grad, lat_off, vals[perm].to(grad.dtype)).to(W_dec.dtype)
        return g_v, g_w, None


def gather_pre(
    x_in: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, active: ActiveSet, b_dec: Tensor | None = None  # noqa: N803
) -> Tensor:
    """Differentiable ``pre[rows, cols]`` where ``pre = x_in @ W_enc + b_enc`` was computed without grad.

    Args:
        x_in: encoder input (already ``x - b_dec`` when the SAE subtracts it).
        W_enc, b_enc: encoder parameters.
        pre: the pre-activations, computed under ``no_grad``.
        active: which entries to gather.
        b_dec: pass the decoder bias when ``x_in = x - b_dec``, so it receives its encoder-side gradient.
    """
    return _GatherPre.apply(x_in, W_enc, b_enc, b_dec, pre, active)


def sparse_decode(vals: Tensor, W_dec: Tensor, active: ActiveSet) -> Tensor:  # noqa: N803
    """Differentiable ``(n, d_in)`` decode of the active entries (no bias)."""
    return _SparseDecode.apply(vals, W_dec, active)


__all__ = ["ActiveSet", "gather_pre", "sparse_decode", "fast_sort"]
