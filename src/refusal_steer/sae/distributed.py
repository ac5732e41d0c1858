"""Data-parallel SAE training over ``torch.distributed``: each process takes its own rows of every batch.

Every process reads the same block-shuffled stream (:func:`~refusal_steer.sae.training.shuffled_batches`
is deterministic given the seed), keeps its contiguous slice of each global batch, and the gradients
are summed across processes (all-reduce SUM), so every process takes the same optimizer step.

Plain DDP (average the gradients of per-shard losses) would not train the same SAE: the losses
normalise by batch-level statistics (FVU divides by the batch's total variance, TopK's AuxK by the
variance of the residual error over the batch, BatchTopK keeps the ``k * n`` largest activations of the
whole batch), and a sum of gradients of per-shard ratios is not the gradient of the batch's ratio.
So each kind's :meth:`~refusal_steer.sae.base.Sae.training_step` takes a :class:`BatchShard`: it
all-reduces the sums those statistics need before the loss, and returns the whole batch's values
with this shard's share of the gradient (:meth:`BatchShard.total`). The shares sum to the gradient
of the one-process loss on the whole batch: two processes train the same SAE as one, to float rounding.

Example (launch with ``torchrun --nproc_per_node 2 train.py``):
    >>> with data_parallel_from_env("cpu") as (parallel, device):  # doctest: +SKIP
    ...     train_sae(sae.to(device), shards, cfg, out, parallel=parallel)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchShard:
    """This process's rows of a global batch of ``n_total`` rows, and the collectives that combine statistics.

    Every method is a collective: every process of the group calls it, in the same order.
    """

    n_total: int
    """Rows of the global batch (all shards together)."""
    group: Any = None
    """Process group (None: the default one)."""

    def sum(self, t: Tensor) -> Tensor:
        """A detached copy of ``t`` summed over every shard."""
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def total(self, local: Tensor) -> Tensor:
        """``local`` summed over every shard, carrying only ``local``'s own gradient.

        The value is the global sum; the gradient is this shard's share, so summing every process's
        gradients (what the trainer's all-reduce does) gives exactly the gradient of the global sum.
        """
        mine = local.detach()
        return local + (self.sum(mine) - mine)

    def mean_rows(self, per_row: Tensor) -> Tensor:
        """The mean of a per-row quantity over the global batch (value global, gradient this shard's share)."""
        return self.total(per_row.sum()) / self.n_total

    def total_variance(self, t: Tensor) -> Tensor:
        """``sum((t - mean)^2)`` over the rows and columns of the global batch, ``mean`` its row mean (no gradient).

        Two passes (global mean, then the centred sum) rather than ``sum t^2 - n mean^2``, which cancels
        badly when the mean is large next to the spread, as it is for residual streams.
        """
        t = t.detach()
        mean = self.sum(t.sum(0)) / self.n_total
        return self.sum((t - mean).pow(2).sum()).clamp_min(1e-12)

    def any(self, mask: Tensor) -> Tensor:
        """Elementwise OR of a boolean mask over every shard (e.g. which latents fired anywhere in the batch)."""
        out = mask.to(torch.uint8)
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out.bool()

    def gather(self, t: Tensor) -> Tensor:
        """Every shard's 1-D ``t`` (any length, even 0) concatenated in rank order."""
        t = t.detach().contiguous()
        world = dist.get_world_size(self.group)
        sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([t.numel()], device=t.device), group=self.group)
        lengths = [int(s) for s in sizes]
        longest = max(lengths)
        padded = torch.cat([t, t.new_zeros(longest - t.numel())])  # all_gather needs equal sizes
        parts = [t.new_empty(longest) for _ in range(world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:n] for p, n in zip(parts, lengths, strict=True)])


def mean_rows(per_row: Tensor, shard: BatchShard | None) -> Tensor:
    """``per_row.mean()``; with a shard, over the global batch (:meth:`BatchShard.mean_rows`)."""
    return per_row.mean() if shard is None else shard.mean_rows(per_row)


def fired_anywhere(fired: Tensor, shard: BatchShard | None) -> Tensor:
    """``fired`` as it is; with a shard, OR-ed over every shard."""
    return fired if shard is None else shard.any(fired)


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel training run (what :func:`~refusal_steer.sae.training.train_sae` needs).

    Example:
        >>> dp = DataParallel(rank=1, world_size=2)
        >>> dp.rows(5), dp.is_main
        (slice(3, 5, None), False)
    """

    rank: int
    world_size: int
    group: Any = None
    """Process group (None: the default one)."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and outputs and shows progress."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This process's contiguous slice of a global batch of ``n`` rows (sizes differ by at most one; may be empty)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def shard(self, n: int) -> BatchShard:
        """The :class:`BatchShard` of a global batch of ``n`` rows."""
        return BatchShard(n_total=n, group=self.group)

    def sum_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """All-reduce SUM of every parameter's gradient (a missing one counts as zero, so no process waits forever)."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=self.group)

    @torch.no_grad()
    def broadcast_state(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers (persistent or not) to every process."""
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0, group=self.group)

    def barrier(self) -> None:
        """Wait for every process."""
        dist.barrier(group=self.group)


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def data_parallel_from_env(device: str) -> Iterator[tuple[DataParallel | None, str]]:
    """Join the process group torchrun set up, if any; yield ``(parallel, device)`` and leave the group on exit.

    Under torchrun with ``WORLD_SIZE > 1`` the backend is NCCL for a CUDA ``device`` (which becomes
    ``cuda:LOCAL_RANK``) and gloo otherwise; outside it, this yields ``(None, device)`` and does nothing.
    """
    world = launched_world_size()
    if world <= 1:
        yield None, device
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend=backend)
    logger.info("data-parallel rank %d of %d (%s, %s)", rank, world, backend, device)
    try:
        yield DataParallel(rank=rank, world_size=world), device
    finally:
        if started:
            dist.destroy_process_group()


__all__ = ["BatchShard", "DataParallel", "data_parallel_from_env", "launched_world_size", "mean_rows", "fired_anywhere"]
