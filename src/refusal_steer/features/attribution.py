"""Attribution patching with integrated gradients over SAE latents (Yeo, Prakash, Neo et al. 2025, §3.1).

For each harmful prompt:

- *clean* run: the prompt as is; each SAE's latents ``f_clean`` and error ``e_clean`` at its point;
- *patched* run: the refusal direction ablated at every residual write; ``f_patch``, ``e_patch``, and the
  patched answer's first token ``t`` (the argmax at the last position);
- metric ``m = logit(t) - logsumexp(logits of the refusal tokens)`` at the last position (Yeo et al. use
  one refusal token, "I"; with several, their log-sum-exp);
- ``steps`` interpolations ``alpha = k / steps`` (k = 0..steps-1), at every SAE point at once, each point's
  activation replaced by ``dec(f_alpha) + e_alpha`` with ``f_alpha = (1 - alpha) enc(x) + alpha f_patch`` and
  ``e_alpha = (1 - alpha) (x - dec(enc(x))) + alpha e_patch`` (``x`` the activation arriving there, so later
  points see earlier ones' interpolation, as in their code);
- attribution ``(f_patch - f_clean) * mean_alpha(dm/df_alpha)``, averaged over the prompt's tokens after the
  chat template's fixed prefix: one score per prompt and latent.

A high score marks a latent whose suppression by the ablation moves the model from refusing to answering.

How it is computed: decoders are linear, so ``dec(f_alpha) + e_alpha = (1 - alpha) x + alpha x_patch`` (``x_patch``
the patched run's activation there) and ``dm/df_alpha = dm/dx_alpha W_dec^T / norm_scale``. Each step therefore
interpolates activations directly, no SAE runs per step, and the decoder is applied once to the summed
activation gradients. The steps run together, ``step_batch`` of them per forward and backward pass, as rows
``(step, prompt)`` of one batch (rows never attend to each other, so each row's gradient is its own). Equal to
the step-by-step computation through the SAEs to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..batching import Batch, build_batch, forward, logits_to_keep, position_ids
from ..directions.screening import frozen_parameters
from ..errors import ConfigError
from ..generation import encode_prompts
from ..hooks import HookCall, HookPoint, apply, prompt_boundary, prompt_continues, residual_writes
from ..interventions import Ablate
from ..models.loaded import LoadedModel
from ..sae.base import Sae
from .scores import prompt_mask


def check_points(points: Mapping[str, HookPoint]) -> dict[HookPoint, str]:
    """``{point: SAE name}``; two SAEs at one point cannot be interpolated together."""
    by_point: dict[HookPoint, str] = {}
    for name, point in points.items():
        if point in by_point:
            raise ConfigError(f"SAEs {by_point[point]!r} and {name!r} are both at {point}",
                              fix="give attribution one SAE per hook point")
        by_point[point] = name
    return by_point


@dataclass
class _Tap:
    """Records every SAE point's activation and its SAE's latents there (read-only), per forward call.

    With a shared prefix a run is two calls, the prefix's (one row) then the batch's own columns; ``prefix``
    keeps the first call's activations and the other fields the last call's.
    """

    saes: Mapping[str, Sae]
    by_point: Mapping[HookPoint, str]
    prefix: dict[str, Tensor] = field(default_factory=dict)
    activations: dict[str, Tensor] = field(default_factory=dict)
    latents: dict[str, Tensor] = field(default_factory=dict)
    kind = "attribution_tap"
    positions = "all"

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return tuple(self.by_point)

    def validate(self, lm: LoadedModel) -> None:
        pass

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        name = self.by_point[call.point]
        self.prefix.setdefault(name, x)
        self.activations[name] = x
        self.latents[name] = self.saes[name].encode(x)
        return x


@dataclass
class _Interpolate:
    """Replaces each SAE point's activation, row by row, by ``(1 - alpha) x + alpha x_patch`` and keeps it for its gradient.

    Rows are step-major: row ``r`` is prompt ``r % batch`` at ``alphas[r]`` (in the shared prefix's call, row ``r``
    is step ``r``). This is the module docstring's ``dec(f_alpha) + e_alpha``: with a linear decoder the SAE terms
    cancel, and ``dm/df_alpha`` is the gradient kept here times the decoder (:func:`_latent_gradient`).
    """

    by_point: Mapping[HookPoint, str]
    patch: _Tap
    alphas: Tensor
    prefix_alphas: Tensor | None = None
    """Set while the shared prefix is computed (one row per step; no gradient is kept there)."""
    outputs: dict[str, Tensor] = field(default_factory=dict)
    kind = "attribution_interpolate"
    positions = "all"

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return tuple(self.by_point)

    def validate(self, lm: LoadedModel) -> None:
        pass

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        name = self.by_point[call.point]
        in_prefix = self.prefix_alphas is not None
        x_patch = self.patch.prefix[name] if in_prefix else self.patch.activations[name]
        alphas = self.prefix_alphas if in_prefix else self.alphas
        x_patch = x_patch.repeat(x.shape[0] // x_patch.shape[0], *([1] * (x_patch.dim() - 1)))
        alpha = alphas.view(-1, *([1] * (x.dim() - 1)))
        out = ((1 - alpha) * x.float() + alpha * x_patch.float()).to(x.dtype)
        if in_prefix or not torch.is_grad_enabled():
            return out
        if out.requires_grad:  # a later point: its input already depends on an earlier point's output
            out.retain_grad()
        else:  # the first point: nothing below needs a gradient, so the backward pass stops here
            out.requires_grad_(True)
        self.outputs[name] = out
        return out


def _latent_gradient(sae: Sae, activation_gradient: Tensor) -> Tensor:
    """``dm/df`` from ``dm/dx`` at a point replaced by ``dec(f) + e``: the gradient times ``d dec / df = W_dec / norm_scale``."""
    w_dec = sae.W_dec.detach().float() / sae.norm_scale.float()
    return activation_gradient.float() @ w_dec.T


def _metric(logits: Tensor, target: Tensor, refusal_ids: Tensor) -> Tensor:
    last = logits[:, -1].float()
    return last.gather(1, target[:, None])[:, 0] - torch.logsumexp(last[:, refusal_ids], dim=-1)


def _steps_batch(lm: LoadedModel, batch: Batch, step: _Interpolate, n_steps: int) -> Batch:
    """``batch``'s rows repeated ``n_steps`` times, step-major; a shared prefix is computed again, once per step.

    The prefix runs without gradient: it lies inside the chat template's fixed prefix, whose tokens get no score,
    and no later token's gradient flows through an earlier one's activations (causal attention).
    """
    rows = {"input_ids": batch.input_ids.repeat(n_steps, 1), "attention_mask": batch.attention_mask.repeat(n_steps, 1),
            "position_ids": batch.position_ids.repeat(n_steps, 1)}
    if batch.prefix_ids is None:
        return Batch(**rows)
    from transformers import DynamicCache

    prefix = batch.prefix_ids.expand(n_steps, -1)
    cache = DynamicCache(config=lm.model.config)
    min_suffix = int(batch.attention_mask[:, batch.prefix_length:].sum(1).min())
    step.prefix_alphas = step.alphas[:: batch.input_ids.shape[0]]
    try:
        with prompt_boundary(lm, batch.total_width), prompt_continues(lm, min_suffix), torch.no_grad():
            lm.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), position_ids=position_ids(torch.ones_like(prefix)),
                     **{batch.cache_key: cache}, use_cache=True, **logits_to_keep(lm.model, 1))
    finally:
        step.prefix_alphas = None
    cache.batch_repeat_interleave(batch.input_ids.shape[0])
    return Batch(**rows, prefix_ids=batch.prefix_ids, past_key_values=cache, cache_key=batch.cache_key)


DEFAULT_STEP_BATCH = 10
"""Interpolation steps per forward-backward pass (rows = steps x prompts); see ``bench/bench_attribution.py``."""


def attribute_batch(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], token_lists: Sequence[Sequence[int]],
                    direction: Tensor, refusal_ids: Sequence[int], *, steps: int = 10, skip_tokens: int = 0,
                    step_batch: int = DEFAULT_STEP_BATCH, share_prefix: bool = True) -> dict[str, Tensor]:
    """Per-prompt attributions of every latent of every SAE for one batch: ``{name: (batch, d_sae)}`` plus ``"_metric"``.

    ``"_metric"`` is ``(batch, 2)``: the metric on the clean and on the patched run (the patched one should be higher).

    Args:
        step_batch: interpolation steps run together in one forward and backward pass (``step_batch x batch`` rows);
            lower it to bound memory. The result does not depend on it beyond float rounding.
        share_prefix: compute the prompts' common prefix once per run and step (:func:`refusal_steer.batching.build_batch`),
            never more of it than ``skip_tokens`` (those tokens get no score, so nothing there needs a per-prompt gradient).
    """
    if steps < 1:
        raise ConfigError(f"attribution needs at least 1 interpolation step, got {steps}")
    if step_batch < 1:
        raise ConfigError(f"step_batch must be at least 1, got {step_batch}")
    by_point = check_points(points)
    ids = torch.tensor(list(refusal_ids), dtype=torch.long, device=lm.device)
    keep = logits_to_keep(lm.model, 1)
    clean, patch = _Tap(saes, by_point), _Tap(saes, by_point)
    ablation = Ablate(direction, residual_writes(lm))
    share = share_prefix and skip_tokens > 0
    with torch.no_grad():
        with apply(lm, [clean]):
            batch = build_batch(lm, token_lists, share_prefix=share, max_prefix=skip_tokens)
            clean_logits = forward(lm, batch, **keep).logits
        with apply(lm, [ablation, patch]):
            patch_batch = build_batch(lm, token_lists, share_prefix=share, max_prefix=skip_tokens)
            patch_logits = forward(lm, patch_batch, **keep).logits
    if patch_batch.prefix_length != batch.prefix_length:  # both runs must lay the prompts out alike
        raise RuntimeError(f"clean and patched runs shared {batch.prefix_length} and {patch_batch.prefix_length} prefix tokens")
    n = batch.input_ids.shape[0]
    mask = prompt_mask(batch.attention_mask, skip_tokens)[:, batch.prefix_length:].unsqueeze(-1).float()
    target = patch_logits[:, -1].argmax(-1)
    metric = torch.stack([_metric(clean_logits, target, ids), _metric(patch_logits, target, ids)], dim=1)
    grads = {name: torch.zeros(x.shape, dtype=torch.float32, device=x.device) for name, x in patch.activations.items()}
    with frozen_parameters(lm.model), torch.enable_grad():
        for first in range(0, steps, step_batch):
            chunk = range(first, min(first + step_batch, steps))
            alphas = torch.tensor([k / steps for k in chunk], dtype=torch.float32, device=lm.device).repeat_interleave(n)
            step = _Interpolate(by_point, patch, alphas)
            with apply(lm, [step]):
                logits = forward(lm, _steps_batch(lm, batch, step, len(chunk)), **keep).logits
            _metric(logits, target.repeat(len(chunk)), ids).sum().backward()
            for name, out in step.outputs.items():
                grads[name] += out.grad.float().view(len(chunk), *grads[name].shape).sum(0)
            del step, logits
    out: dict[str, Tensor] = {}
    counts = mask.sum(1).clamp_min(1)
    for name in clean.latents:
        attr = (patch.latents[name].float() - clean.latents[name].float()) * _latent_gradient(saes[name], grads[name] / steps)
        out[name] = ((attr * mask).sum(1) / counts).cpu()
    out["_metric"] = metric.cpu()
    return out


def attribute(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], prompts: Sequence[str], direction: Tensor,
              refusal_ids: Sequence[int], *, steps: int = 10, batch_size: int = 4, skip_tokens: int = 0, system: str | None = None,
              progress: bool = True, partial_dir: Path | None = None, step_batch: int = DEFAULT_STEP_BATCH) -> dict[str, Tensor]:
    """:func:`attribute_batch` over ``prompts`` in order: ``{name: (n, d_sae)}`` and ``"_metric"`` ``(n, 2)``.

    With ``partial_dir``, each finished batch is saved there (safetensors) and reused on a rerun with the
    same prompts, so an interrupted attribution resumes where it stopped.
    """
    from tqdm.auto import tqdm

    tokens = encode_prompts(lm, prompts, system=system)
    if partial_dir is not None:
        partial_dir.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, Tensor]] = []
    starts = list(range(0, len(tokens), batch_size))
    for start in tqdm(starts, desc=f"attribution ({steps} IG steps)", unit="batch", disable=not progress):
        file = partial_dir / f"batch-{start:05d}-{batch_size}.safetensors" if partial_dir is not None else None
        if file is not None and file.is_file():
            parts.append(load_file(str(file)))
            continue
        part = attribute_batch(lm, saes, points, tokens[start:start + batch_size], direction, refusal_ids, steps=steps, skip_tokens=skip_tokens,
                               step_batch=step_batch)
        if file is not None:
            save_file({k: v.contiguous() for k, v in part.items()}, str(file))
        parts.append(part)
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


__all__ = ["DEFAULT_STEP_BATCH", "attribute", "attribute_batch", "check_points"]
