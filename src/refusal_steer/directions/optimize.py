"""Refine the selected refusal direction by gradient descent (after Wollschläger et al. 2025, "refusal direction optimisation").

Difference-in-means is a mean over everything harmful prompts do differently from harmless ones, so ablating
it removes refusal and also moves harmless answers (the KL the selection filters on). Here the direction itself
is trained, with the model frozen: starting from the selected direction ``r``, Adam minimises

    CE(compliant answers to harmful *train* prompts | r ablated everywhere)
      + kl_weight * KL(unsteered || r ablated) of the next token on harmless *train* prompts.

The compliant answers are the model's own greedy answers to the harmful train prompts under ablation of the
*target* candidate (by default the lowest-bypass one, usually too costly in KL to select), kept only when the
judge says they do not refuse and they do not loop: the gradient asks "remove what makes the model refuse
these" without asking it to move anything else. Only train prompts enter the gradient. Every ``eval_every``
steps the direction is scored on the selection's *validation* prompts (bypass log-odds, and KL with the same
filter), and the lowest bypass that passes the filter is kept, step 0 (the selected direction) included, so
on validation the result is never worse than difference-in-means. Ablation of any fixed direction is linear,
so the result bakes into weights (``orthogonalize``) like the difference-in-means one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..batching import build_batch, forward, logits_to_keep
from ..errors import ConfigError, RefusalSteerError
from ..generation import encode_prompts
from ..hooks import HookCall, HookPoint, apply
from ..interventions import all_layers_ablation, project_out, residual_writes
from ..interventions.positions import position_mask
from ..models import LoadedModel
from ..models.memory import recompute_mlp
from .scores import KlFilter, last_token_logprobs, refusal_log_odds
from .screening import frozen_parameters

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class OptimizeConfig:
    """Options of :func:`optimize_direction`; ``steps=0`` skips the refinement."""

    steps: int = 10
    """Adam steps (each one batch of harmful and one of harmless train prompts)."""
    lr: float = 0.01
    """Adam learning rate on the (unit-initialised) direction."""
    kl_weight: float = 0.5
    """Weight of the harmless KL term against the compliance cross-entropy."""
    batch_size: int = 16
    """Prompts of each kind per step (8 made the validation KL swing by 0.1 nats between checkpoints on the default model)."""
    micro_batch: int = 4
    """Rows per forward+backward within a step (gradients accumulate): bounds the refinement's peak memory; the
    step's loss and gradient are those of the whole batch (up to float rounding of the accumulation)."""
    target_tokens: int = 12
    """Tokens of each compliant answer the cross-entropy is taken over."""
    eval_every: int = 5
    """Score the direction on the validation prompts every this many steps (and at step 0)."""
    kl_threshold: float = 0.1
    """A checkpoint is kept only if its validation KL is below this (as in selection)."""
    n_kl: int = 128
    """Harmless validation prompts that KL is measured on (the pipeline draws them from the validation split)."""
    seed: int = 0
    """Seed of the batch order."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "micro_batch", "target_tokens", "eval_every", "n_kl"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ConfigError(f"optimize {name}={getattr(self, name)} is out of range", fix=f"give a positive {name}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"optimize lr={self.lr} must be a positive number")
        if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            raise ConfigError(f"optimize kl_weight={self.kl_weight} must be >= 0")


@dataclass
class OptimizedDirection:
    """The kept direction and the record of how it was found."""

    direction: Tensor
    """Unit-norm float32 ``(d_model,)``."""
    step: int
    """Step of the kept checkpoint (0: the selected direction itself was best on validation)."""
    checkpoints: list[dict]
    """Every validation check: step, bypass, KL (a lower bound when ``kl_n`` < ``n_kl``), status."""
    history: list[dict]
    """Per step: the batch's cross-entropy and KL."""
    n_targets: int
    """Harmful train prompts with a compliant target answer."""
    config: OptimizeConfig

    def to_json(self) -> dict:
        return {"step": self.step, "checkpoints": self.checkpoints, "history": self.history, "n_targets": self.n_targets,
                "config": asdict(self.config)}


class _TrainableAblation:
    """Ablation of ``param / |param|`` at every residual write, differentiable in ``param``.

    It applies :func:`refusal_steer.interventions.project_out`, the arithmetic :class:`~refusal_steer.interventions.Ablate`
    uses, on a direction that is a live parameter (``Ablate`` keeps a detached copy, as every saved steer should).
    """

    kind = "trainable_ablate"
    positions = "all"

    def __init__(self, param: torch.nn.Parameter, points: tuple[HookPoint, ...]) -> None:
        self.param, self.points = param, points

    def validate(self, lm: LoadedModel) -> None:
        pass

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        r = (self.param / self.param.norm()).to(device=x.device, dtype=x.dtype)
        return project_out(x, r, position_mask(self.positions, call.positions, x.dtype))


def _compliance_ce(lm: LoadedModel, contexts: list[list[int]], targets: list[list[int]], count: int | None = None) -> Tensor:
    """Summed per-token cross-entropy of ``targets`` after ``contexts`` (teacher forcing) over ``count`` tokens, with autograd.

    ``count`` defaults to these targets' own token count (the mean); a micro-batch passes its whole batch's count.
    """
    keep = max(len(t) for t in targets) + 1
    batch = build_batch(lm, [c + t for c, t in zip(contexts, targets)], keep=keep, grad=True)
    logits = forward(lm, batch, **logits_to_keep(lm.model, keep)).logits[:, -keep:]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    total, own = logprobs.new_zeros(()), 0
    for row, target in enumerate(targets):
        k = len(target)
        ids = torch.tensor(target, device=logprobs.device).unsqueeze(-1)
        total = total - logprobs[row, keep - 1 - k : keep - 1].gather(-1, ids).sum()
        own += k
    return total / (own if count is None else count)


def _next_token_kl(lm: LoadedModel, contexts: list[list[int]], base: Tensor, n: int | None = None) -> Tensor:
    """Mean KL(base || steered) of the next token after ``contexts``, weighted as ``len(contexts)`` of ``n`` rows, with autograd."""
    batch = build_batch(lm, contexts, keep=1, grad=True)
    logprobs = torch.log_softmax(forward(lm, batch, **logits_to_keep(lm.model, 1)).logits[:, -1].float(), dim=-1)
    base = base.to(logprobs.device, torch.float32)
    return (base.exp() * (base - logprobs)).sum(dim=-1).mean() * (len(contexts) / (n or len(contexts)))


def _loss_backward(param: torch.nn.Parameter, ce_fns: Sequence, kl_fns: Sequence, kl_weight: float) -> tuple[Tensor, Tensor]:
    """``(sum(ce_fns) + kl_weight * sum(kl_fns)).backward()`` into ``param.grad`` (which must be None), one forward
    graph alive at a time.

    One backward of the sum keeps every forward graph (compliance and harmless micro-batches) alive together. Here
    each graph is built, back-propagated and freed in turn, the KL ones first: peak memory is the largest graph,
    not the sum. The gradient accumulated so far, ``G``, enters each later backward as its first contribution
    (through ``(param * G).sum()``, built after that graph so it runs first, and whose gradient is ``G`` exactly).
    With one function of each kind this keeps the bits of the single backward: there the autograd engine runs the
    KL graph's nodes first (created last, they have the higher sequence numbers) and adds the contributions to
    ``param`` in arrival order, all of the KL ones, then the cross-entropy ones, so every addition happens in the
    same order on the same values (tested against the single backward). The forward passes are independent (the
    model is frozen and the hooks keep no state between calls), so their order does not change their values.

    Returns the (detached) summed cross-entropy and KL values.
    """
    if param.grad is not None:
        raise ValueError("param.grad must be None (call optimizer.zero_grad() first)")
    done: Tensor | None = None
    values: dict[str, Tensor] = {"ce": param.new_zeros(()), "kl": param.new_zeros(())}
    for name, fn, weight in [("kl", f, kl_weight) for f in kl_fns] + [("ce", f, None) for f in ce_fns]:
        value = fn()
        loss = value if weight is None else weight * value
        values[name] = values[name] + value.detach()
        (loss if done is None else loss + (param * done.detach()).sum()).backward()
        done, param.grad = param.grad, None
    param.grad = done
    return values["ce"], values["kl"]


def _chunks(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def optimize_direction(
    lm: LoadedModel,
    init: Tensor,
    harmful_train: Sequence[str],
    targets: dict[int, list[int]],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    kl_prompts: Sequence[str],
    refusal_token_ids: Sequence[int],
    config: OptimizeConfig = OptimizeConfig(),
    *,
    scoring_batch_size: int = 16,
    system: str | None = None,
    progress: bool = True,
) -> OptimizedDirection:
    """Train the ablated direction from ``init``; return the checkpoint with the lowest validation bypass passing the KL filter.

    Args:
        init: the selected (difference-in-means) direction; step 0.
        harmful_train, harmless_train: the gradient's prompts (the ones the candidates were fitted on).
        targets: answer token ids per index of ``harmful_train`` (:func:`compliance_targets`); prompts without one are not used.
        harmful_val, kl_prompts: the selection's validation prompts, for choosing a checkpoint only.
        refusal_token_ids: the model's refusal tokens (bypass score).

    Example:
        >>> targets = compliance_targets(lm, P["harmful_train"], r_strong, n_tokens=12)  # doctest: +SKIP
        >>> found = optimize_direction(lm, r, P["harmful_train"], targets, P["harmless_train"],
        ...                            P["harmful_val"], P["harmless_val"], [40])  # doctest: +SKIP
        >>> found.step, found.checkpoints[-1]["bypass"]  # doctest: +SKIP
    """
    if not harmful_train or not harmless_train or not harmful_val or not kl_prompts:
        raise ConfigError("direction optimisation needs harmful and harmless train prompts and validation prompts")
    init = init.detach().float().cpu()
    init = init / init.norm()
    harmful_ids = sorted(i for i, t in targets.items() if t)
    if not harmful_ids:
        raise RefusalSteerError("no harmful train prompt has a compliant target answer, so there is nothing to train on",
                                fix="use more train prompts or skip the refinement (--optimize-steps 0)")
    if harmful_ids[0] < 0 or harmful_ids[-1] >= len(harmful_train):
        raise ConfigError(f"targets name prompt indices outside the {len(harmful_train)} harmful train prompts")
    harmful_tokens = encode_prompts(lm, harmful_train, system=system)
    harmless_tokens = encode_prompts(lm, harmless_train, system=system)
    base_harmless = last_token_logprobs(lm, harmless_train, batch_size=scoring_batch_size, system=system)
    base_kl = last_token_logprobs(lm, kl_prompts, batch_size=scoring_batch_size, system=system)
    kl_filter = KlFilter(lm, kl_prompts, base_kl, config.kl_threshold, batch_size=scoring_batch_size, system=system)

    def check(step: int, direction: Tensor) -> dict:
        ablation = [all_layers_ablation(direction, lm)]
        bypass = refusal_log_odds(last_token_logprobs(lm, harmful_val, ablation, batch_size=scoring_batch_size, system=system),
                                  refusal_token_ids).mean().item()
        kl = kl_filter(ablation)
        return {"step": step, "bypass": bypass, "kl": kl.kl, "kl_n": kl.n_measured, "passes": kl_filter.passes(kl),
                "cosine_to_init": float(direction @ init)}

    param = torch.nn.Parameter(init.clone())
    trainable = _TrainableAblation(param, residual_writes(lm))
    optimizer = torch.optim.Adam([param], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    checked = {0: init.clone()}
    checkpoints = [check(0, init)]
    history: list[dict] = []
    bar = tqdm(range(1, config.steps + 1), desc="optimising direction", unit="step", disable=not progress)
    with frozen_parameters(lm.model):
        for step in bar:
            picked = torch.randperm(len(harmful_ids), generator=generator)[: config.batch_size].tolist()
            rows = [harmful_ids[i] for i in picked]
            harmless_rows = torch.randperm(len(harmless_tokens), generator=generator)[: config.batch_size].tolist()
            optimizer.zero_grad()
            with apply(lm, [trainable]), recompute_mlp(lm):
                count = sum(len(targets[i]) for i in rows)
                ce, kl = _loss_backward(
                    param,
                    [lambda part=part: _compliance_ce(lm, [harmful_tokens[i] for i in part], [targets[i] for i in part], count)
                     for part in _chunks(rows, config.micro_batch)],
                    [lambda part=part: _next_token_kl(lm, [harmless_tokens[i] for i in part], base_harmless[part], len(harmless_rows))
                     for part in _chunks(harmless_rows, config.micro_batch)],
                    config.kl_weight,
                )
            optimizer.step()
            history.append({"step": step, "ce": ce.item(), "kl": kl.item()})
            bar.set_postfix(ce=f"{ce.item():.3f}", kl=f"{kl.item():.3f}")
            if step % config.eval_every == 0 or step == config.steps:
                checked[step] = (param.detach() / param.detach().norm()).clone()
                checkpoints.append(check(step, checked[step]))
    passing = [c for c in checkpoints if c["passes"]]
    kept = min(passing, key=lambda c: c["bypass"])["step"] if passing else 0
    for c in checkpoints:
        c["status"] = "kept" if c["step"] == kept else ("passes" if c["passes"] else "filtered: kl")
    return OptimizedDirection(direction=checked[kept], step=kept, checkpoints=checkpoints, history=history,
                              n_targets=len(harmful_ids), config=config)
