"""Cache activations at hook points to safetensors shards, with bounded memory and resume.

Layout of an output directory::

    manifest.json                 config (points, positions, model spec + source sha256, dtype, n, ...)
                                  and the finished shards
    shard-00000.safetensors       one 2-D tensor (rows, width) per point, named like "resid_pre.12",
    shard-00001.safetensors       plus "prompt_index" and "token_index" (rows,) int64
    ...

Rows per prompt depend on ``positions``:

- ``last``: one row, the last prompt token (the end of the assistant header).
- ``post_instruction``: ``k`` rows, the template's post-instruction tokens (Arditi et al. 2024, §2.2),
  prompt-major, so ``tensor.view(n, k, d)`` restores them.
- ``all``: one row per non-padding token.
- ``mean``: one row, the mean over the prompt's non-padding tokens (``token_index`` = -1).

``token_index`` counts the prompt's tokens from 0. Each shard covers ``shard_size`` consecutive prompts,
is written to a temporary name and renamed, and is listed in the manifest afterwards: an interrupted
run resumes at the first missing shard. The forward pass stops after the deepest requested point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from . import __version__
from .atomic import atomic_save_safetensors, atomic_write_json
from .errors import ConfigError, CorruptFileError
from .batching import record_batch
from .generation import as_prompt, encode_prompts, length_order, run_with_backoff
from .hooks import HookPoint, Intervention, parse_points
from .interventions.steer_file import validate_all
from .models.chat import post_instruction
from .models.loaded import LoadedModel
from .models.loading import parse_dtype

logger = logging.getLogger(__name__)

PositionMode = Literal["last", "post_instruction", "all", "mean"]
POSITION_MODES: tuple[str, ...] = ("last", "post_instruction", "all", "mean")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "refusal-steer/activations"
PROMPT_INDEX = "prompt_index"
TOKEN_INDEX = "token_index"


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _prompts_sha256(prompts: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_activations(
    lm: LoadedModel,
    prompts: Sequence[Any],
    points: Sequence[HookPoint | str] | str,
    out_dir: str | Path,
    *,
    positions: PositionMode = "last",
    dtype: str | torch.dtype = torch.float32,
    batch_size: int = 8,
    shard_size: int = 1024,
    system: str | None = None,
    interventions: Sequence[Intervention] = (),
    source: str | None = None,
    share_prefix: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the prompts and stream the activations at ``points`` to shards in ``out_dir``.

    Args:
        lm: the model.
        prompts: strings, message lists, or dataset records (a :class:`~refusal_steer.data.Dataset`).
        points: hook points, as values, strings or one comma-separated string (``"resid_pre.12,mlp_out.3"``).
        out_dir: the output directory (created; an existing one with the same config is resumed).
        positions: ``last``, ``post_instruction``, ``all`` or ``mean`` (see the module docstring).
        dtype: storage dtype (``float32``, ``bfloat16``, ``float16``).
        batch_size: prompts per forward pass (halved automatically on out-of-memory).
        shard_size: prompts per shard; bounds memory (one shard is held at a time).
        system: optional system prompt.
        interventions: steer installed while caching (the recorder sees its effect).
        source: a label for the prompts (e.g. the dataset name), recorded in the manifest.
        share_prefix: compute each batch's common prefix (the chat template's system prompt) once
            (:mod:`refusal_steer.batching`); unused for ``positions="mean"``, which reads it.
        progress: show a progress bar in tokens/s.

    Returns:
        The manifest (also in ``out_dir/manifest.json``).

    Example:
        >>> cache_activations(lm, ["Hi", "How do I bake bread?"], "resid_pre.12", "acts")  # doctest: +SKIP
        >>> load_activations("acts", "resid_pre.12").shape  # doctest: +SKIP
        torch.Size([2, 896])
    """
    if positions not in POSITION_MODES:
        raise ConfigError(f"unknown positions {positions!r}", fix=f"use one of {', '.join(POSITION_MODES)}")
    store_dtype, point_list = _checked_storage(lm, points, dtype, shard_size)
    validate_all(lm, interventions)
    texts = [as_prompt(p) for p in prompts]
    if not texts:
        raise ConfigError("no prompts to cache")
    encoded = encode_prompts(lm, texts, system=system)
    n_post = 0
    if positions == "post_instruction":
        suffix = post_instruction(lm.tokenizer, system=system).token_ids
        n_post = len(suffix)
        for i, tokens in enumerate(encoded):
            if tuple(tokens[-n_post:]) != suffix:
                raise ConfigError(f"prompt {i} does not end with the post-instruction tokens", fix="use positions=last for conversations that end mid-turn")
    extra = {"system": system, "source": source, "prompts_sha256": _prompts_sha256(texts)}
    return _cache_encoded(lm, encoded, point_list, Path(out_dir), positions=positions, n_post=n_post, store_dtype=store_dtype,
                          batch_size=batch_size, shard_size=shard_size, interventions=interventions, extra=extra, progress=progress,
                          share_prefix=share_prefix)


def cache_token_activations(
    lm: LoadedModel,
    token_lists: Sequence[Sequence[int]],
    points: Sequence[HookPoint | str] | str,
    out_dir: str | Path,
    *,
    skip_tokens: int = 0,
    dtype: str | torch.dtype = torch.float32,
    batch_size: int = 8,
    shard_size: int = 1024,
    source: str | None = None,
    share_prefix: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Cache every token's activation (``positions="all"``) for already-tokenised sequences.

    This is the input path of SAE training (:mod:`refusal_steer.sae.corpus` builds the token mix).
    ``skip_tokens`` drops each sequence's first tokens (a chat template's fixed system prefix, whose
    first token is an attention sink with an outsized norm), so they neither waste the token budget
    nor dominate the reconstruction loss. Same layout, manifest and resume as :func:`cache_activations`;
    with ``share_prefix`` a batch's common prefix, up to ``skip_tokens``, is computed once.
    """
    if skip_tokens < 0:
        raise ConfigError(f"skip_tokens must be >= 0, got {skip_tokens}")
    store_dtype, point_list = _checked_storage(lm, points, dtype, shard_size)
    encoded = [list(t) for t in token_lists if len(t) > skip_tokens]
    if not encoded:
        raise ConfigError(f"no token sequence is longer than skip_tokens={skip_tokens}", fix="pass longer sequences or a smaller skip_tokens")
    digest = hashlib.sha256(json.dumps(encoded).encode()).hexdigest()
    extra = {"source": source, "tokens_sha256": digest, "skip_tokens": skip_tokens}
    return _cache_encoded(lm, encoded, point_list, Path(out_dir), positions="all", n_post=0, store_dtype=store_dtype, batch_size=batch_size,
                          shard_size=shard_size, interventions=(), extra=extra, progress=progress, skip_tokens=skip_tokens,
                          share_prefix=share_prefix)


def _checked_storage(
    lm: LoadedModel, points: Sequence[HookPoint | str] | str, dtype: str | torch.dtype, shard_size: int
) -> tuple[torch.dtype, list[HookPoint]]:
    """The checks both cache functions make before any forward pass: shard size, storage dtype, points."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    store_dtype = parse_dtype(dtype)
    if not isinstance(store_dtype, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} cannot be a storage dtype", fix="use float32, bfloat16 or float16")
    point_list = parse_points(points) if isinstance(points, str) else [HookPoint.parse(p) for p in points]
    if not point_list:
        raise ConfigError("no hook points given", fix="pass e.g. points='resid_pre.12'")
    for point in point_list:
        point.validate(lm)
    return store_dtype, point_list


def _cache_encoded(
    lm: LoadedModel,
    encoded: list[list[int]],
    point_list: list[HookPoint],
    out: Path,
    *,
    positions: str,
    n_post: int,
    store_dtype: torch.dtype,
    batch_size: int,
    shard_size: int,
    interventions: Sequence[Intervention],
    extra: dict[str, Any],
    progress: bool,
    skip_tokens: int = 0,
    share_prefix: bool = True,
) -> dict[str, Any]:
    """Shared body of the two cache functions: manifest, resume, shards."""
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "points": [str(p) for p in point_list],
        "positions": positions,
        "dtype": str(store_dtype).removeprefix("torch."),
        "n": len(encoded),
        "shard_size": shard_size,
        "model": lm.spec,
        "source_sha256": lm.source_sha256,
        "d_model": lm.d_model,
        **extra,
        "interventions": [type(i).__name__ for i in interventions],
    }
    manifest_path = out / MANIFEST_NAME
    manifest = _start_manifest(manifest_path, config)
    done = {entry["file"] for entry in manifest["shards"] if (out / entry["file"]).is_file()}
    manifest["shards"] = [entry for entry in manifest["shards"] if entry["file"] in done]
    n_shards = (len(encoded) + shard_size - 1) // shard_size
    todo = [s for s in range(n_shards) if _shard_name(s) not in done]
    if done:
        logger.info("resuming %s: %d of %d shards already written", out, len(done), n_shards)

    from tqdm.auto import tqdm

    total_tokens = sum(len(encoded[i]) for s in todo for i in range(s * shard_size, min(len(encoded), (s + 1) * shard_size)))
    started = time.perf_counter()
    with tqdm(total=total_tokens, desc="caching activations", unit="tok", unit_scale=True, disable=not progress, leave=False) as bar:
        for s in todo:
            start, stop = s * shard_size, min(len(encoded), (s + 1) * shard_size)
            tensors = _cache_shard(lm, encoded, range(start, stop), point_list, positions, n_post, store_dtype, batch_size, interventions, bar,
                                   skip_tokens, share_prefix)
            _write_shard(out / _shard_name(s), tensors, {"start": str(start), "stop": str(stop)})
            manifest["shards"].append({"file": _shard_name(s), "start": start, "stop": stop, "rows": int(tensors[PROMPT_INDEX].shape[0])})
            manifest["shards"].sort(key=lambda e: e["start"])
            atomic_write_json(manifest_path, manifest)
    manifest["complete"] = True
    manifest["rows"] = sum(e["rows"] for e in manifest["shards"])
    manifest.setdefault("seconds", 0.0)
    manifest["seconds"] = round(manifest["seconds"] + time.perf_counter() - started, 3)
    atomic_write_json(manifest_path, manifest)
    return manifest


def _start_manifest(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path} is not valid JSON ({exc})", fix="delete the output directory and run again") from exc
        if existing.get("config") != config:
            changed = sorted(k for k in set(config) | set(existing.get("config", {})) if existing.get("config", {}).get(k) != config.get(k))
            raise ConfigError(
                f"{path.parent} holds activations cached with a different configuration (differs in: {', '.join(changed)})",
                fix="choose another output directory or delete this one",
            )
        existing["complete"] = False
        return existing
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "package_version": __version__, "config": config, "shards": [], "complete": False}
    atomic_write_json(path, manifest)
    return manifest


def _cache_shard(
    lm: LoadedModel,
    encoded: list[list[int]],
    indices: range,
    points: list[HookPoint],
    positions: str,
    n_post: int,
    store_dtype: torch.dtype,
    batch_size: int,
    interventions: Sequence[Intervention],
    bar: Any,
    skip_tokens: int = 0,
    share_prefix: bool = True,
) -> dict[str, Tensor]:
    """Activations for prompts ``indices``, rows in prompt order."""
    per_prompt: dict[int, tuple[dict[HookPoint, Tensor], Tensor]] = {}
    order = [indices[i] for i in length_order([len(encoded[i]) for i in indices])]
    # The common prefix (chat template) is computed once unless the positions read include it.
    keep = {"last": 1, "post_instruction": n_post}.get(positions, 1)
    max_prefix = {"mean": 0, "all": skip_tokens}.get(positions)

    def run(batch_indices: list[int]) -> dict[int, tuple[dict[HookPoint, Tensor], Tensor]]:
        lists = [encoded[i] for i in batch_indices]
        acts = record_batch(lm, lists, points, interventions, share_prefix=share_prefix, keep=keep, max_prefix=max_prefix)
        width = next(iter(acts.values())).shape[1]
        result = {}
        for row, index in enumerate(batch_indices):
            length = len(encoded[index])
            if positions == "last":
                columns, token_index = slice(width - 1, width), torch.tensor([length - 1])
            elif positions == "post_instruction":
                columns, token_index = slice(width - n_post, width), torch.arange(length - n_post, length)
            else:
                first = skip_tokens if positions == "all" else 0
                columns, token_index = slice(width - length + first, width), torch.arange(first, length)
            values = {}
            for point, x in acts.items():
                selected = x[row, columns]
                if positions == "mean":
                    selected = selected.float().mean(0, keepdim=True)
                # A copy, never a view: a view would keep the whole (batch, seq, d) activation alive.
                values[point] = selected.to(device="cpu", dtype=store_dtype, copy=True)
            result[index] = (values, torch.tensor([-1]) if positions == "mean" else token_index)
        bar.update(sum(len(t) for t in lists))
        return result

    for _, result in run_with_backoff(order, batch_size, run, what="caching batch"):
        per_prompt.update(result)
    ordered = [per_prompt[i] for i in indices]
    tensors = {str(p): torch.cat([values[p] for values, _ in ordered]).contiguous() for p in points}
    tensors[TOKEN_INDEX] = torch.cat([token_index for _, token_index in ordered]).to(torch.int64)
    tensors[PROMPT_INDEX] = torch.cat([torch.full((len(t),), i, dtype=torch.int64) for i, (_, t) in zip(indices, ordered)])
    return tensors


def _write_shard(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    atomic_save_safetensors(tensors, path, metadata={"format": MANIFEST_FORMAT, **metadata})


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of an activation directory."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(f"{out_dir} has no {MANIFEST_NAME}", fix="point at a directory written by cache_activations / refusal-steer cache")
    return json.loads(path.read_text())


def iter_shards(out_dir: str | Path, point: HookPoint | str, *, with_index: bool = False, allow_partial: bool = False) -> Iterator[Any]:
    """Yield each shard's ``(rows, width)`` tensor at ``point`` in prompt order (bounded memory).

    With ``with_index`` yield ``(tensor, prompt_index, token_index)`` instead.
    """
    from safetensors.torch import load_file

    manifest = read_manifest(out_dir)
    if not manifest.get("complete") and not allow_partial:
        raise ConfigError(f"{out_dir} is an unfinished cache", fix="run the same cache command again to finish it, or pass allow_partial=True")
    key = str(HookPoint.parse(point))
    if key not in manifest["config"]["points"]:
        raise ConfigError(f"{out_dir} has no activations at {key}", fix=f"cached points: {', '.join(manifest['config']['points'])}")
    for entry in manifest["shards"]:
        tensors = load_file(str(Path(out_dir) / entry["file"]))
        if key not in tensors:
            raise CorruptFileError(f"{entry['file']} lacks {key}", fix="delete the shard and rerun the cache command to rewrite it")
        yield (tensors[key], tensors[PROMPT_INDEX], tensors[TOKEN_INDEX]) if with_index else tensors[key]


def load_activations(out_dir: str | Path, point: HookPoint | str) -> Tensor:
    """All cached activations at ``point`` as one ``(rows, width)`` tensor (rows in prompt order).

    Example:
        >>> acts = load_activations("runs/acts", "resid_pre.12")  # doctest: +SKIP
    """
    shards = list(iter_shards(out_dir, point))
    if not shards:
        raise ConfigError(f"{out_dir} holds no shards")
    return torch.cat(shards)
