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

from ..batching import build_batch, forward, logits_to_keep
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
    """Records every SAE's latents and error at its point (read-only)."""

    saes: Mapping[str, Sae]
    by_point: Mapping[HookPoint, str]
    latents: dict[str, Tensor] = field(default_factory=dict)
    errors: dict[str, Tensor] = field(default_factory=dict)
    kind = "attribution_tap"
    positions = "all"

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return tuple(self.by_point)

    def validate(self, lm: LoadedModel) -> None:
        pass

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        name = self.by_point[call.point]
        sae = self.saes[name]
        z = sae.encode(x)
        self.latents[name] = z
        self.errors[name] = x.float() - sae.decode(z).float()
        return x


@dataclass
class _Interpolate:
    """Replaces each SAE point's activation by ``dec(f_alpha) + e_alpha`` and keeps ``f_alpha`` for its gradient."""

    saes: Mapping[str, Sae]
    by_point: Mapping[HookPoint, str]
    patch: _Tap
    alpha: float
    latents: dict[str, Tensor] = field(default_factory=dict)
    kind = "attribution_interpolate"
    positions = "all"

    @property
    def points(self) -> tuple[HookPoint, ...]:
        return tuple(self.by_point)

    def validate(self, lm: LoadedModel) -> None:
        pass

    def __call__(self, x: Tensor, call: HookCall) -> Tensor:
        name = self.by_point[call.point]
        sae = self.saes[name]
        z = sae.encode(x)
        error = x.float() - sae.decode(z).float()
        f_alpha = (1 - self.alpha) * z + self.alpha * self.patch.latents[name]
        f_alpha.retain_grad()
        self.latents[name] = f_alpha
        e_alpha = (1 - self.alpha) * error + self.alpha * self.patch.errors[name]
        return (sae.decode(f_alpha).float() + e_alpha).to(x.dtype)


def _metric(logits: Tensor, target: Tensor, refusal_ids: Tensor) -> Tensor:
    last = logits[:, -1].float()
    return last.gather(1, target[:, None])[:, 0] - torch.logsumexp(last[:, refusal_ids], dim=-1)


def attribute_batch(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], token_lists: Sequence[Sequence[int]],
                    direction: Tensor, refusal_ids: Sequence[int], *, steps: int = 10, skip_tokens: int = 0) -> dict[str, Tensor]:
    """Per-prompt attributions of every latent of every SAE for one batch: ``{name: (batch, d_sae)}`` plus ``"_metric"``.

    ``"_metric"`` is ``(batch, 2)``: the metric on the clean and on the patched run (the patched one should be higher).
    """
    if steps < 1:
        raise ConfigError(f"attribution needs at least 1 interpolation step, got {steps}")
    by_point = check_points(points)
    batch = build_batch(lm, token_lists, share_prefix=False)
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
    grads = {name: torch.zeros_like(z, dtype=torch.float32) for name, z in clean.latents.items()}
    with frozen_parameters(lm.model), torch.enable_grad():
        for k in range(steps):
            step = _Interpolate(saes, by_point, patch, alpha=k / steps)
            with apply(lm, [step]):
                logits = forward(lm, batch, **keep).logits
            _metric(logits, target, ids).sum().backward()
            for name, f_alpha in step.latents.items():
                grads[name] += f_alpha.grad.float()
            del step, logits
    out: dict[str, Tensor] = {}
    counts = mask.sum(1).clamp_min(1)
    for name in clean.latents:
        attr = (patch.latents[name].float() - clean.latents[name].float()) * (grads[name] / steps)
        out[name] = ((attr * mask).sum(1) / counts).cpu()
    out["_metric"] = metric.cpu()
    return out


def attribute(lm: LoadedModel, saes: Mapping[str, Sae], points: Mapping[str, HookPoint], prompts: Sequence[str], direction: Tensor,
              refusal_ids: Sequence[int], *, steps: int = 10, batch_size: int = 4, skip_tokens: int = 0, system: str | None = None,
              progress: bool = True, partial_dir: Path | None = None) -> dict[str, Tensor]:
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
        part = attribute_batch(lm, saes, points, tokens[start:start + batch_size], direction, refusal_ids, steps=steps, skip_tokens=skip_tokens)
        if file is not None:
            save_file({k: v.contiguous() for k, v in part.items()}, str(file))
        parts.append(part)
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


__all__ = ["attribute", "attribute_batch", "check_points"]
