"""Train an SAE from any iterable of activation batches, with checkpoints and exact resume.

The data path is a block-shuffled buffer: activations are gathered into blocks of
``batch_size * buffer_batches`` rows, each block is permuted with an RNG seeded by
``(seed, block index)`` and cut into batches. Because a block's order depends only on the seed and
its index, resuming at step ``s`` only needs to skip the rows of earlier blocks and the batches
already used from the current one: no buffer contents are saved, and a resumed run sees exactly the
batches of an uninterrupted run (so it ends with the same weights).

Optimisation: Adam, learning rate warmed up linearly, held, then decayed linearly to zero over the
last ``decay_fraction`` of steps (Anthropic, April 2024 update); gradient-norm clipping; each kind's
``after_optimizer_step`` (unit-norm decoder for TopK kinds, positive thresholds for JumpReLU).
Dead latents (no activation for ``dead_tokens`` tokens) are tracked and passed to the loss (AuxK).

Data parallel (``parallel=``, what ``torchrun ... sae train`` passes): every process reads the same
stream, trains on its own rows of each global batch with the global batch's loss normalisers, and
the gradients are summed, so every process takes the same step and N processes train the SAE one
would (:mod:`.distributed`). Only rank 0 writes checkpoints and outputs and shows progress.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_save_safetensors, atomic_write_text
from ..errors import ConfigError, EmptyDatasetError, RefusalSteerError
from .base import Sae
from .config import _require
from .constants import (
    CHECKPOINTS_DIRNAME,
    LATEST_CHECKPOINT_FILENAME,
    TRAINER_STATE_FILENAME,
    TRAINER_TENSORS_FILENAME,
    TRAINING_FILENAME,
    WEIGHTS_FILENAME,
)
from .distributed import DataParallel
from .io import _load_weights_into, read_json, read_safetensors, save_sae

logger = logging.getLogger(__name__)

ActivationSource = Iterable[Tensor] | Callable[[], Iterable[Tensor]]


@dataclass
class TrainConfig:
    """How to train (the SAE's own config says what to train)."""

    tokens: int
    """Token budget: train on this many activations."""
    batch_size: int = 4096
    """Activations per optimizer step."""
    lr: float | None = None
    """Peak learning rate; None: 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024, §2.4)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    warmup_fraction: float = 0.02
    """Fraction of steps over which the learning rate rises linearly from 0."""
    decay_fraction: float = 0.2
    """Fraction of final steps over which the learning rate decays linearly to 0."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (None: no clipping)."""
    buffer_batches: int = 16
    """Shuffle-buffer size, in batches."""
    dead_tokens: int = 1_000_000
    """A latent that has not fired for this many tokens counts as dead (fed to AuxK, reported)."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (0: never)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    init_from_data: bool = True
    """Before step 0, re-initialise the weights from ``seed`` and set norm scale and b_dec from the first batch."""
    b_dec_init: str = "geometric_median"
    """Initial decoder bias: geometric_median, mean or zeros."""
    seed: int = 0
    """Seed for initialisation and the shuffle order."""
    log_every: int = 10
    """Update the progress bar and history every this many steps."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        _require(isinstance(self.tokens, int) and self.tokens > 0, "tokens", f"must be a positive integer, got {self.tokens!r}")
        _require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        _require(self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.warmup_fraction <= 1, "warmup_fraction", f"must be in [0, 1], got {self.warmup_fraction}")
        _require(0 <= self.decay_fraction <= 1, "decay_fraction", f"must be in [0, 1], got {self.decay_fraction}")
        _require(self.warmup_fraction + self.decay_fraction <= 1, "decay_fraction", "warmup_fraction + decay_fraction must be <= 1")
        _require(self.buffer_batches >= 1, "buffer_batches", f"must be >= 1, got {self.buffer_batches}")
        _require(self.dead_tokens > 0, "dead_tokens", f"must be > 0, got {self.dead_tokens}")
        _require(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _require(self.b_dec_init in ("geometric_median", "mean", "zeros"), "b_dec_init", f"must be geometric_median, mean or zeros, got {self.b_dec_init!r}")
        _require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")

    @property
    def total_steps(self) -> int:
        """Planned optimizer steps."""
        return math.ceil(self.tokens / self.batch_size)

    def peak_lr(self, d_sae: int) -> float:
        """The learning rate after warm-up."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at ``step`` (0-based)."""
        total = self.total_steps
        warm = int(self.warmup_fraction * total)
        decay = int(self.decay_fraction * total)
        if warm and step < warm:
            return (step + 1) / warm
        if decay and step >= total - decay:
            return max(0.0, (total - step) / decay)
        return 1.0


@dataclass
class TrainResult:
    """What :func:`train_sae` returns."""

    sae: Sae
    steps: int
    """Optimizer steps taken in total (including those before a resume)."""
    tokens: int
    """Activations trained on in total."""
    seconds: float
    """Wall time of this call."""
    resumed_from: int | None = None
    """Step of the checkpoint this call resumed from (None: started fresh)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Every ``log_every`` steps: step, tokens, loss, mse, fvu, l0, aux_loss, dead_fraction, lr, tokens_per_s."""


# --------------------------------------------------------------------------- data
def _iter_source(source: ActivationSource) -> Iterator[Tensor]:
    it = source() if callable(source) else source
    for t in it:
        if t.ndim < 2:
            raise ConfigError(f"activation batches must be (n, d_in), got shape {tuple(t.shape)}")
        yield t.reshape(-1, t.shape[-1])


def shuffled_batches(source: ActivationSource, batch_size: int, buffer_batches: int, seed: int, start_step: int = 0) -> Iterator[Tensor]:
    """Block-shuffled batches of ``batch_size`` rows, deterministic given ``seed``; start at ``start_step``.

    Example:
        >>> batches = list(shuffled_batches([torch.arange(12.0).reshape(6, 2)], 2, 3, seed=0))
        >>> [b.shape for b in batches]
        [torch.Size([2, 2]), torch.Size([2, 2]), torch.Size([2, 2])]
    """
    block_rows = batch_size * buffer_batches
    start_block, skip = divmod(start_step, buffer_batches)
    it = _iter_source(source)
    carry: list[Tensor] = []
    carried = 0

    def take(n_rows: int) -> Tensor | None:
        nonlocal carried
        while carried < n_rows:
            try:
                t = next(it)
            except StopIteration:
                break
            carry.append(t)
            carried += t.shape[0]
        if carried == 0:
            return None
        data = torch.cat(carry) if len(carry) > 1 else carry[0]
        out, rest = data[:n_rows], data[n_rows:]
        carry.clear()
        if rest.shape[0]:
            carry.append(rest)
        carried = rest.shape[0]
        return out

    for _ in range(start_block):  # rows of blocks already trained on
        if take(block_rows) is None:
            return
    block = start_block
    while True:
        data = take(block_rows)
        if data is None:
            return
        g = torch.Generator().manual_seed(seed * 1_000_003 + block)
        data = data[torch.randperm(data.shape[0], generator=g)]
        n_batches = math.ceil(data.shape[0] / batch_size)
        for b in range(skip if block == start_block else 0, n_batches):
            yield data[b * batch_size : (b + 1) * batch_size]
        block += 1


# --------------------------------------------------------------------------- checkpoints
def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"optim.{idx}.{k}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    return out


def _load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, idx, k = name.split(".", 2)
            state.setdefault(int(idx), {})[k] = t
    sd["state"] = state
    opt.load_state_dict(sd)


def _training_buffers(sae: Sae) -> dict[str, Tensor]:
    """The SAE's non-persistent buffers (training state such as BatchTopK's window count), for checkpoints."""
    persistent = set(sae.state_dict())
    return {f"sae.{name}": b.detach().clone() for name, b in sae.named_buffers() if name not in persistent}


def _load_training_buffers(sae: Sae, tensors: dict[str, Tensor]) -> None:
    buffers = dict(sae.named_buffers())
    with torch.no_grad():
        for name, t in tensors.items():
            if name.startswith("sae.") and name[4:] in buffers:
                buffers[name[4:]].copy_(t)


def _write_checkpoint(out_dir: Path, sae: Sae, opt: torch.optim.Optimizer, since_fired: Tensor, step: int, tokens: int, cfg: TrainConfig) -> Path:
    root = out_dir / CHECKPOINTS_DIRNAME
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:09d}"
    tmp = root / f".step_{step:09d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_sae(sae, tmp)
    atomic_save_safetensors({**_optimizer_tensors(opt), **_training_buffers(sae), "since_fired": since_fired}, tmp / TRAINER_TENSORS_FILENAME)
    atomic_write_text(tmp / TRAINER_STATE_FILENAME, json.dumps({"step": step, "tokens": tokens, "train_config": dataclasses.asdict(cfg)}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # the directory appears complete or not at all
    atomic_write_text(root / LATEST_CHECKPOINT_FILENAME, json.dumps({"step": step, "path": final.name}))
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint directory under ``out_dir``, or None."""
    root = Path(out_dir) / CHECKPOINTS_DIRNAME
    pointer = root / LATEST_CHECKPOINT_FILENAME
    if not pointer.is_file():
        return None
    path = root / str(read_json(pointer)["path"])
    return path if (path / TRAINER_STATE_FILENAME).is_file() else None


# --------------------------------------------------------------------------- training
def train_sae(
    sae: Sae,
    source: ActivationSource,
    cfg: TrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = True,
    stop_after: int | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train ``sae`` in place on activation batches from ``source``.

    Args:
        sae: a freshly built SAE (its config says the kind, widths and point).
        source: ``(n, d_in)`` tensors (shards, a list, a stream). To resume exactly, pass something
            re-iterable from the start (a list, :class:`~refusal_steer.sae.shards.ActivationShards`)
            or a zero-argument factory returning a fresh iterator.
        cfg: the training config.
        out_dir: where checkpoints and the final SAE (``cfg.json`` + ``sae_weights.safetensors`` +
            ``training.json``) go; None keeps everything in memory.
        resume: continue from the newest checkpoint in ``out_dir`` if there is one.
        stop_after: stop after this many steps in total (for tests and time-boxed runs); the final
            SAE is still written.
        parallel: this process's place in a data-parallel run (every process calls this with the
            same arguments; see :mod:`refusal_steer.sae.distributed`); None trains in this process alone.

    Returns:
        A :class:`TrainResult` (the SAE is trained in place).

    Example:
        >>> from refusal_steer.sae import TopKConfig, build_sae
        >>> sae = build_sae(TopKConfig(d_in=8, d_sae=32, k=2))
        >>> res = train_sae(sae, [torch.randn(512, 8)], TrainConfig(tokens=512, batch_size=64, progress=False))
        >>> res.steps
        8
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    main = parallel is None or parallel.is_main
    device = sae.device
    params = [p for p in sae.parameters() if p.requires_grad]
    lr = cfg.peak_lr(sae.cfg.d_sae)
    try:
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    step = tokens = 0
    resumed_from = None

    ckpt = latest_checkpoint(out) if (out is not None and resume) else None
    if ckpt is not None:
        state = read_json(ckpt / TRAINER_STATE_FILENAME)
        _load_weights_into(sae, read_safetensors(ckpt / WEIGHTS_FILENAME), ckpt / WEIGHTS_FILENAME)
        tensors = read_safetensors(ckpt / TRAINER_TENSORS_FILENAME)
        _load_optimizer_tensors(opt, {k: v.to(device) for k, v in tensors.items()})
        _load_training_buffers(sae, tensors)
        since_fired = tensors["since_fired"].to(device)
        step, tokens = int(state["step"]), int(state["tokens"])
        resumed_from = step
        logger.info("resuming from %s (step %d, %d tokens)", ckpt, step, tokens)
    if parallel is not None:
        parallel.broadcast_state(sae)  # the same start everywhere, even for an SAE built from the unseeded global RNG

    total = cfg.total_steps
    last = min(total, stop_after) if stop_after is not None else total
    batches = shuffled_batches(source, cfg.batch_size, cfg.buffer_batches, cfg.seed, start_step=step)
    history: list[dict[str, float]] = []
    bar = tqdm(total=cfg.tokens, initial=tokens, unit="tok", unit_scale=True, disable=not (cfg.progress and main), desc=f"sae {sae.cfg.arch}")
    tok_window, t_window = 0, time.perf_counter()
    sae.train()
    try:
        while step < last:
            try:
                x = next(batches)
            except StopIteration:
                if step == 0:
                    raise EmptyDatasetError("the activation source is empty", fix="check the activations directory or iterator") from None
                logger.warning("activations ran out after %d steps (%d tokens); planned %d tokens", step, tokens, cfg.tokens)
                break
            n = x.shape[0]  # rows of the global batch
            if step == 0 and cfg.init_from_data:  # from the whole batch, which every process holds
                sae.reset_parameters(generator=torch.Generator().manual_seed(cfg.seed))
                sae.initialize_from_data(x.to(device), cfg.b_dec_init)
            shard = None
            if parallel is not None:
                shard, x = parallel.shard(n), x[parallel.rows(n)]
            x = x.to(device, non_blocking=True)
            dead = since_fired >= cfg.dead_tokens
            for g in opt.param_groups:
                g["lr"] = lr * cfg.lr_factor(step)
            if shard is None:
                res = sae.training_step(x, dead=dead, progress=step / total)
            else:
                res = sae.training_step(x, dead=dead, progress=step / total, shard=shard)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            if parallel is not None:
                parallel.sum_gradients(params)  # the shards' shares add up to the global batch's gradient
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sae.after_optimizer_step()
            since_fired += n
            since_fired[res.fired] = 0
            step += 1
            tokens += n
            tok_window += n
            bar.update(n)
            if step % cfg.log_every == 0 or step == last:
                loss = float(res.loss.detach())
                if not math.isfinite(loss):
                    raise RefusalSteerError(f"SAE training diverged at step {step} (loss {loss})", fix="lower --lr or check the activations for inf/nan")
                now = time.perf_counter()
                rec = {
                    "step": step,
                    "tokens": tokens,
                    "loss": loss,
                    "mse": float(res.mse),
                    "fvu": float(res.fvu),
                    "l0": float(res.l0),
                    "aux_loss": float(res.aux_loss),
                    "dead_fraction": float((since_fired >= cfg.dead_tokens).float().mean()),
                    "lr": opt.param_groups[0]["lr"],
                    "tokens_per_s": tok_window / max(now - t_window, 1e-9),
                }
                history.append(rec)
                bar.set_postfix(loss=f"{loss:.4g}", fvu=f"{rec['fvu']:.3f}", l0=f"{rec['l0']:.1f}", dead=f"{rec['dead_fraction']:.1%}", tok_s=f"{rec['tokens_per_s']:.0f}")
                tok_window, t_window = 0, now
            if main and out is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                _write_checkpoint(out, sae, opt, since_fired, step, tokens, cfg)
    finally:
        bar.close()
        sae.eval()

    seconds = time.perf_counter() - t0
    if main and out is not None:
        if cfg.checkpoint_every and step % cfg.checkpoint_every != 0:
            _write_checkpoint(out, sae, opt, since_fired, step, tokens, cfg)
        save_sae(sae, out)
        record = {
            "train_config": dataclasses.asdict(cfg),
            "steps": step,
            "tokens": tokens,
            "seconds_this_call": seconds,
            "resumed_from": resumed_from,
            "final": history[-1] if history else None,
        }
        atomic_write_text(out / TRAINING_FILENAME, json.dumps(record, indent=2))
    if parallel is not None:
        parallel.barrier()  # every process returns once rank 0's outputs exist
    return TrainResult(sae=sae, steps=step, tokens=tokens, seconds=seconds, resumed_from=resumed_from, history=history)


__all__ = ["TrainConfig", "TrainResult", "train_sae", "shuffled_batches", "latest_checkpoint"]
