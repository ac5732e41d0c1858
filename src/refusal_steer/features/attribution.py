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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..batching import Batch, build_batch, forward, logits_to_keep
from ..directions.screening import frozen_parameters
from ..errors import ConfigError
from ..generation import encode_prompts
from ..hooks import HookCall, HookPoint, apply, residual_writes
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
    """Records every SAE point's activation and its SAE's latents there (read-only)."""

    saes: Mapping[str, Sae]
    by_point: Mapping[HookPoint, str]
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
        self.activations[name] = x
        self.latents[name] = self.saes[name].encode(x)
        return x


@dataclass
class _Interpolate:
    """Replaces each SAE point's activation, row by row, by ``(1 - alpha) x + alpha x_patch`` and keeps it for its gradient.

    Rows are step-major: row ``r`` is prompt ``r % batch`` at ``alphas[r]``. This is the module docstring's
    ``dec(f_alpha) + e_alpha``: with a linear decoder the SAE terms cancel, and ``dm/df_alpha`` is the
    gradient kept here times the decoder (:func:`_latent_gradient`), so no SAE runs per step.
    """

    by_point: Mapping[HookPoint, str]
    patch: _Tap
    alphas: Tensor
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
        x_patch = self.patch.activations[name]
        x_patch = x_patch.repeat(x.shape[0] // x_patch.shape[0], *([1] * (x_patch.dim() - 1)))
        alpha = self.alphas.view(-1, *([1] * (x.dim() - 1)))
        out = ((1 - alpha) * x.float() + alpha * x_patch.float()).to(x.dtype)
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


def _repeat(batch: Batch, times: int) -> Batch:
    """``batch`` (no shared prefix) with its rows repeated ``times`` times, step-major."""
    return Batch(input_ids=batch.input_ids.repeat(times, 1), attention_mask=batch.attention_mask.repeat(times, 1),
                 position_ids=batch.position_ids.repeat(times, 1))


DEFAULT_STEP_BATCH = 10
"""Interpolation steps per forward-backward pass (rows = steps x prompts); 10 x 4 prompts is the measured fastest on CPU
(``bench/bench_attribution.py``), at about 2 GB above the model on the default model."""


def attribute_batch(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], token_lists: Sequence[Sequence[int]],
                    direction: Tensor, refusal_ids: Sequence[int], *, steps: int = 10, skip_tokens: int = 0,
                    step_batch: int = DEFAULT_STEP_BATCH) -> dict[str, Tensor]:
    """Per-prompt attributions of every latent of every SAE for one batch: ``{name: (batch, d_sae)}`` plus ``"_metric"``.

    ``"_metric"`` is ``(batch, 2)``: the metric on the clean and on the patched run (the patched one should be higher).

    Args:
        step_batch: interpolation steps run together in one forward and backward pass (``step_batch x batch`` rows);
            lower it to bound memory. The result does not depend on it beyond float rounding.
    """
    if steps < 1:
        raise ConfigError(f"attribution needs at least 1 interpolation step, got {steps}")
    if step_batch < 1:
        raise ConfigError(f"step_batch must be at least 1, got {step_batch}")
    by_point = check_points(points)
    batch = build_batch(lm, token_lists, share_prefix=False)
    n = batch.input_ids.shape[0]
    mask = prompt_mask(batch.attention_mask, skip_tokens).unsqueeze(-1).float()
    ids = torch.tensor(list(refusal_ids), dtype=torch.long, device=lm.device)
    keep = logits_to_keep(lm.model, 1)
    clean, patch = _Tap(saes, by_point), _Tap(saes, by_point)
    ablation = Ablate(direction, residual_writes(lm))
    with torch.no_grad():
        with apply(lm, [clean]):
            clean_logits = forward(lm, batch, **keep).logits
        with apply(lm, [ablation, patch]):
            patch_logits = forward(lm, batch, **keep).logits
    target = patch_logits[:, -1].argmax(-1)
    metric = torch.stack([_metric(clean_logits, target, ids), _metric(patch_logits, target, ids)], dim=1)
    grads = {name: torch.zeros(x.shape, dtype=torch.float32, device=x.device) for name, x in patch.activations.items()}
    with frozen_parameters(lm.model), torch.enable_grad():
        for first in range(0, steps, step_batch):
            chunk = range(first, min(first + step_batch, steps))
            alphas = torch.tensor([k / steps for k in chunk], dtype=torch.float32, device=lm.device).repeat_interleave(n)
            step = _Interpolate(by_point, patch, alphas)
            with apply(lm, [step]):
                logits = forward(lm, _repeat(batch, len(chunk)), **keep).logits
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
