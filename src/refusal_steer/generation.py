"""Batched, padding-correct generation under interventions.

Prompts are chat-formatted with the model's template, sorted by length into batches (less padding),
left-padded with attention masks (transformers derives position ids from the mask), and generated with
``model.generate`` and the KV cache while the interventions are installed through
:func:`refusal_steer.hooks.apply`. :func:`refusal_steer.hooks.prompt_boundary` tells the hooks where the
prompt ends, so ``positions="prompt"``/``"generated"`` mean the same with the cache on or off.

We use ``model.generate`` rather than a hand-written loop: it is exactly the baseline users compare
against (an empty intervention list reproduces its tokens), it knows every family's cache type, and
``bench/bench_generation.py`` measures the hooks' overhead on top of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .batching import build_batch, left_pad, position_ids  # noqa: F401  (left_pad, position_ids: re-exported, long-standing API)
from .errors import ConfigError, ResourceExhaustedError
from .hooks import Intervention, apply, prompt_boundary
from .models.chat import PromptLike, format_chat, tokenize_exact
from .models.loaded import LoadedModel

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]

OnToken = Callable[[int, int, int], Any]
"""``on_token(prompt_index, position, token_id) -> stop?`` (see :func:`generate_from_ids`)."""


@dataclass(frozen=True)
class Completion:
    """One generated answer.

    ``token_ids`` are the new tokens, up to and including the stop token when one was produced
    (``finish_reason == "stop"``); ``text`` is their decoding without special tokens.
    """

    prompt: PromptLike
    text: str
    token_ids: tuple[int, ...]
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: FinishReason
    gates_fired: tuple[bool, ...] = ()
    """Per conditional gate among the (top-level) interventions, in order: whether it steered this answer."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (one line of ``--out FILE.jsonl``; ``gates_fired`` only when a gate ran)."""
        out = asdict(self)
        out["token_ids"] = list(self.token_ids)
        if self.gates_fired:
            out["gates_fired"] = list(self.gates_fired)
        else:
            del out["gates_fired"]
        return out


def as_prompt(item: Any) -> PromptLike:
    """A prompt from a string, a message list, or a dataset record (``.prompt`` / ``.messages``)."""
    if isinstance(item, str):
        return item
    if hasattr(item, "prompt") and isinstance(item.prompt, str):
        return item.prompt
    if hasattr(item, "messages"):
        return list(item.messages)
    if isinstance(item, Sequence) and all(isinstance(m, dict) for m in item):
        return list(item)
    raise ConfigError(
        f"cannot turn a {type(item).__name__} into a prompt",
        fix="pass strings, lists of {'role', 'content'} messages, or Instruction/Conversation records",
    )


def encode_prompts(lm: LoadedModel, prompts: Iterable[Any], *, system: str | None = None) -> list[list[int]]:
    """Chat-format and tokenise each prompt (no second BOS: the template brings its own)."""
    return [tokenize_exact(lm.tokenizer, format_chat(lm.tokenizer, as_prompt(p), system=system)) for p in prompts]


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted longest first, so consecutive batches hold similar lengths (less padding) and an
    out-of-memory shows up on the first batch."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU out-of-memory errors."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_with_backoff(
    items: Sequence[int], batch_size: int, run_batch: Any, *, what: str = "batch", progress: Any = None
) -> Iterator[tuple[list[int], Any]]:
    """Run ``run_batch(indices)`` over ``items`` in batches, halving the batch size on out-of-memory.

    Yields ``(indices, result)`` per finished batch. At batch size 1 an out-of-memory raises
    :class:`ResourceExhaustedError`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    position = 0
    # Equal batches: 100 items at batch size 64 run as 2 x 50, not 64 + 36 (same number of forward
    # calls, smaller ones; in generation every call of a batch costs as much as its longest row).
    n_batches = max(1, math.ceil(len(items) / batch_size))
    size = max(1, math.ceil(len(items) / n_batches))
    while position < len(items):
        indices = list(items[position:position + size])
        try:
            result = run_batch(indices)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise ResourceExhaustedError(f"out of memory on a {what} of size 1 ({exc})") from exc
            size = max(1, size // 2)
            logger.warning("out of memory on a %s; retrying with batch size %d", what, size)
            continue
        position += len(indices)
        if progress is not None:
            progress.update(len(indices))
        yield indices, result


def _eos_ids(lm: LoadedModel) -> list[int]:
    ids = getattr(lm.model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = lm.tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if not ids:
        raise ConfigError(f"{lm.spec} defines no end-of-sequence token", fix="set model.generation_config.eos_token_id")
    return ids


def generation_kwargs(
    lm: LoadedModel,
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    use_cache: bool,
) -> dict[str, Any]:
    """The exact ``model.generate`` arguments: explicit, so the checkpoint's own sampling defaults
    (repetition penalty, top-k...) never leak in silently."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        use_cache=use_cache,
        eos_token_id=_eos_ids(lm),
        pad_token_id=lm.tokenizer.pad_token_id,
        repetition_penalty=1.0,
    )
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0, min_p=None)
    return kwargs


def generate(
    lm: LoadedModel,
    prompts: Sequence[Any],
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    batch_size: int = 8,
    system: str | None = None,
    use_cache: bool = True,
    share_prefix: bool = True,
    progress: bool = True,
) -> list[Completion]:
    """Generate an answer to every prompt with ``interventions`` installed, batched and left-padded.

    Args:
        lm: the model.
        prompts: strings, message lists, or dataset records (``Instruction``/``Conversation``).
        interventions: installed for the whole call (validated before any forward pass).
        max_new_tokens: generation budget per prompt; generation stops earlier on an EOS token.
        do_sample: sample instead of greedy decoding.
        temperature, top_p: sampling parameters (ignored when greedy).
        seed: seeds sampling (reproducible for the same prompts and batch size); the global RNG is
            left untouched.
        batch_size: prompts per batch; halved automatically on out-of-memory.
        system: an optional system prompt for every prompt.
        use_cache: use the KV cache (turning it off gives the same tokens, only slower).
        share_prefix: compute the prompts' common prefix once per batch (needs the cache; same tokens).
        progress: show a progress bar over prompts.

    Returns:
        One :class:`Completion` per prompt, in input order.

    Example:
        >>> [c.text for c in generate(lm, ["How do I bake bread?"], max_new_tokens=32)]  # doctest: +SKIP
    """
    _check_settings(max_new_tokens, do_sample, temperature, top_p)
    prompts = list(prompts)
    if not prompts:
        return []
    texts = [as_prompt(p) for p in prompts]
    encoded = encode_prompts(lm, texts, system=system)
    return generate_from_ids(
        lm, encoded, interventions, prompts=texts, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
        top_p=top_p, seed=seed, batch_size=batch_size, use_cache=use_cache, share_prefix=share_prefix, progress=progress,
    )


def generate_from_ids(
    lm: LoadedModel,
    token_lists: Sequence[Sequence[int]],
    interventions: Sequence[Intervention] = (),
    *,
    prompts: Sequence[PromptLike] | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    batch_size: int = 8,
    use_cache: bool = True,
    share_prefix: bool = True,
    progress: bool = False,
    on_token: OnToken | None = None,
) -> list[Completion]:
    """:func:`generate` on prompts that are already token ids (no chat formatting): what :func:`generate`
    runs after chat-formatting, and what the server runs for raw-text completions.

    Args:
        token_lists: one list of prompt token ids per prompt (each non-empty).
        prompts: what to record as each :attr:`Completion.prompt` (default: the decoded ids).
        on_token: called after every generated token of a prompt still generating, as
            ``on_token(prompt_index, position, token_id)`` (position 0 is the first new token; after an
            out-of-memory retry positions start again at 0); returning True ends that prompt's answer
            there (``finish_reason`` "length"). Streaming and cancellation in the server use it; it
            never changes the tokens of the other prompts.
        The rest: as :func:`generate`.

    Example:
        >>> ids = lm.tokenizer("Once upon a time")["input_ids"]  # doctest: +SKIP
        >>> generate_from_ids(lm, [ids], max_new_tokens=8)[0].text  # doctest: +SKIP
    """
    _check_settings(max_new_tokens, do_sample, temperature, top_p)
    encoded = [list(t) for t in token_lists]
    if not encoded:
        return []
    if any(not t for t in encoded):
        raise ConfigError("every prompt needs at least one token")
    texts = list(prompts) if prompts is not None else [lm.tokenizer.decode(t) for t in encoded]
    if len(texts) != len(encoded):
        raise ConfigError(f"{len(texts)} prompts but {len(encoded)} token lists")
    kwargs = generation_kwargs(lm, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, use_cache=use_cache)
    eos = set(kwargs["eos_token_id"])
    results: list[Completion | None] = [None] * len(encoded)
    order = length_order([len(t) for t in encoded])
    ended: dict[int, int] = {}  # prompt index -> tokens kept, for answers on_token ended
    gates = [iv for iv in interventions if hasattr(iv, "last_fired") and hasattr(iv, "clear_last")]  # conditional gates

    def run_batch(indices: list[int]) -> tuple[Tensor, list[list[bool]]]:
        lists = [encoded[i] for i in indices]
        # With the KV cache on, the prompts' common prefix (the chat template's system prompt) is
        # computed once and its cache repeated over the batch; the tokens are the same (tested).
        batch = build_batch(lm, lists, share_prefix=use_cache and share_prefix, extra_tokens=max_new_tokens)
        inputs = batch.generate_inputs()
        width = inputs["input_ids"].shape[1]
        extra = {"stopping_criteria": _row_callbacks(indices, on_token, eos, ended)} if on_token is not None else {}
        for gate in gates:
            gate.clear_last()
        with prompt_boundary(lm, width):
            out = lm.model.generate(**inputs, **kwargs, **extra)
        # Each gate decided on this batch's prompt forward: its rows are this batch's rows.
        fired = [[bool(x) for x in gate.last_fired.tolist()] if gate.last_fired is not None else [False] * len(indices)
                 for gate in gates]
        return out[:, width:].cpu(), fired

    bar = _progress(len(encoded), "generating", progress)
    rng = torch.random.fork_rng(devices=_rng_devices(lm)) if seed is not None else nullcontext()
    with bar, rng, apply(lm, interventions), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        for indices, (new_tokens, fired) in run_with_backoff(order, batch_size, run_batch, what="generation batch", progress=bar):
            for row, index in enumerate(indices):
                results[index] = _completion(lm, texts[index], len(encoded[index]), new_tokens[row].tolist()[: ended.get(index)], eos,
                                             gates_fired=tuple(f[row] for f in fired))
    return [r for r in results if r is not None]


def _row_callbacks(indices: Sequence[int], on_token: OnToken, eos: set[int], ended: dict[int, int]) -> Any:
    """A stopping criterion that reports each row's new token to ``on_token`` and stops the rows it asks to."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Callbacks(StoppingCriteria):
        def __init__(self) -> None:
            self.done = [False] * len(indices)
            self.position = 0

        def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
            stop = [False] * len(indices)
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.done[row]:
                    continue
                stop[row] = bool(on_token(indices[row], self.position, int(token)))
                self.done[row] = stop[row] or token in eos
                if stop[row]:
                    ended[indices[row]] = self.position + 1
                else:
                    ended.pop(indices[row], None)  # a retry after out-of-memory starts the row again
            self.position += 1
            return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Callbacks()])


def _check_settings(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ConfigError(f"temperature must be > 0 and top_p in (0, 1], got {temperature}, {top_p}")


def _completion(lm: LoadedModel, prompt: PromptLike, n_prompt: int, new: list[int], eos: set[int], *,
                gates_fired: tuple[bool, ...] = ()) -> Completion:
    finish: FinishReason = "length"
    for position, token in enumerate(new):
        if token in eos:
            new = new[: position + 1]
            finish = "stop"
            break
    text = lm.tokenizer.decode(new, skip_special_tokens=True)
    return Completion(prompt=prompt, text=text, token_ids=tuple(new), n_prompt_tokens=n_prompt, n_new_tokens=len(new), finish_reason=finish,
                      gates_fired=gates_fired)


def _rng_devices(lm: LoadedModel) -> list[Any]:
    device = lm.device
    return [device] if device.type == "cuda" else []


def _progress(total: int, desc: str, enabled: bool, unit: str = "prompt") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)
