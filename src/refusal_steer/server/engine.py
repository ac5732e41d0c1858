"""What the worker thread runs: one batch of same-preset, same-sampling requests through the library.

Generation is :func:`refusal_steer.generation.generate_from_ids` under the preset's interventions
(installed with :func:`refusal_steer.hooks.apply` for that batch only), on prompts encoded exactly as
:func:`refusal_steer.generation.generate` encodes them, so a greedy answer is the answer
``refusal-steer generate --steer STEER`` gives. Log-probabilities come from
:func:`refusal_steer.scoring.token_logprobs` under the same interventions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..generation import encode_prompts, generate_from_ids
from ..models.chat import Message
from ..models.loaded import LoadedModel
from ..scoring import TokenLogprobs, token_logprobs
from .presets import Preset


LOGITS_BUDGET = 2**28
"""Logit floats one log-prob forward may hold (1 GiB in float32)."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; requests batch together only when these are equal (and their preset is)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @classmethod
    def from_request(cls, temperature: float | None, top_p: float | None, seed: int | None) -> "Sampling":
        """OpenAI's defaults (temperature 1, top_p 1); temperature 0 is greedy decoding."""
        temperature = 1.0 if temperature is None else float(temperature)
        top_p = 1.0 if top_p is None else float(top_p)
        if temperature == 0:
            return cls()
        return cls(do_sample=True, temperature=temperature, top_p=top_p, seed=seed)


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for two requests to share a batch.

    ``solo`` is set for seeded sampling: such a request runs alone, so the same seed gives the same
    answer whatever else is queued.
    """

    preset: str
    sampling: Sampling
    solo: int | None = None


@dataclass(frozen=True)
class Work:
    """One prompt to answer: token ids, a budget, stop strings, and whether log-probs are wanted."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stops: tuple[str, ...] = ()
    logprobs: int | None = None
    """Top-k alternatives per token (0: only the chosen token's log-prob); None: no log-probs."""
    cancelled: threading.Event | None = field(default=None, compare=False)
    """Set when the client gave up: the row stops at its next token."""
    sink: Callable[[int, int], None] | None = field(default=None, compare=False)
    """Called from the worker thread with ``(position, token_id)`` for every new token (streaming)."""


@dataclass(frozen=True)
class Result:
    """One answer: the generated tokens and text (cut at a stop string), why it ended, and log-probs."""

    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    logprobs: TokenLogprobs | None = None
    """Over ``prompt_ids + token_ids`` (every token after the first), when asked for."""
    gates_fired: tuple[bool, ...] = ()
    """Per conditional gate of the preset (top level, in order): whether it steered this answer (empty: no gate, or nothing generated)."""

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt_ids), "completion_tokens": len(self.token_ids),
                "total_tokens": len(self.prompt_ids) + len(self.token_ids)}


class Engine:
    """Encodes prompts and runs batches for the scheduler (all model access happens in :meth:`run_batch`)."""

    def __init__(self, lm: LoadedModel, presets: Mapping[str, Preset]) -> None:
        self.lm = lm
        self.presets = dict(presets)

    @property
    def context_window(self) -> int | None:
        """The model's maximum sequence length, when its config says."""
        config = self.lm.model.config
        config = getattr(config, "text_config", None) or config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def encode_chat(self, messages: Sequence[Message]) -> tuple[int, ...]:
        """Chat-format and tokenise a conversation exactly as :func:`refusal_steer.generation.generate` does."""
        return tuple(encode_prompts(self.lm, [list(messages)])[0])

    def encode_text(self, text: str) -> tuple[int, ...]:
        """Tokenise raw text for ``/v1/completions`` (with the tokenizer's own special tokens, e.g. a BOS)."""
        return tuple(self.lm.tokenizer(text)["input_ids"])

    def run_batch(self, key: Hashable, works: Sequence[Work]) -> list[Result]:
        """Answer every work item of one batch under one preset (see the module docstring)."""
        assert isinstance(key, BatchKey)
        interventions = list(self.presets[key.preset].interventions)
        sampling = key.sampling
        generated: dict[int, Any] = {}
        rows = [i for i, w in enumerate(works) if w.max_new_tokens > 0]
        if rows:
            completions = generate_from_ids(
                self.lm, [works[i].prompt_ids for i in rows], interventions, max_new_tokens=max(works[i].max_new_tokens for i in rows),
                do_sample=sampling.do_sample, temperature=sampling.temperature, top_p=sampling.top_p,
                seed=sampling.seed if sampling.do_sample else 0, batch_size=len(rows), progress=False,
                on_token=_RowControl([works[i] for i in rows], self.lm.tokenizer),
            )
            generated = dict(zip(rows, completions))
        results = [self._finish(w, generated.get(i)) for i, w in enumerate(works)]
        scored = [i for i, w in enumerate(works) if w.logprobs is not None]
        if scored:
            top_k = max(works[i].logprobs or 0 for i in scored)
            # Every position's logits are kept (batch x length x vocab floats): bound them to ~1 GiB per forward.
            longest = max(len(results[i].prompt_ids) + len(results[i].token_ids) for i in scored)
            batch_size = max(1, min(len(scored), LOGITS_BUDGET // (longest * len(self.lm.tokenizer))))
            logprobs = token_logprobs(self.lm, [results[i].prompt_ids for i in scored], [results[i].token_ids for i in scored],
                                      interventions, top_k=top_k, batch_size=batch_size)
            for i, lp in zip(scored, logprobs):
                k = works[i].logprobs or 0
                lp = TokenLogprobs(token_ids=lp.token_ids, logprobs=lp.logprobs, top=tuple(t[:k] for t in lp.top) if k else ())
                results[i] = replace(results[i], logprobs=lp)
        return results

    def _finish(self, work: Work, completion: Any) -> Result:
        """Cut a completion to this request's budget and stop strings."""
        if completion is None:
            return Result(prompt_ids=work.prompt_ids, token_ids=(), text="", finish_reason="length")
        tokens = tuple(completion.token_ids)
        finish = completion.finish_reason
        if len(tokens) > work.max_new_tokens:  # the batch ran to a longer request's budget
            tokens, finish = tokens[: work.max_new_tokens], "length"
        decode = self.lm.tokenizer.decode
        text = completion.text if tokens == tuple(completion.token_ids) else decode(list(tokens), skip_special_tokens=True)
        cut = _first_stop(text, work.stops)
        if cut is not None:
            text, finish = text[:cut], "stop"
            # Keep the tokens up to the one that completes the stop string (what usage counts).
            for n in range(1, len(tokens) + 1):
                if _first_stop(decode(list(tokens[:n]), skip_special_tokens=True), work.stops) is not None:
                    tokens = tokens[:n]
                    break
        return Result(prompt_ids=work.prompt_ids, token_ids=tokens, text=text, finish_reason=finish, gates_fired=completion.gates_fired)


class _RowControl:
    """``on_token`` for one batch: streams each row's tokens, and ends a row at its own budget, at a stop
    string, or when its client gave up (the other rows' tokens are unchanged)."""

    def __init__(self, works: Sequence[Work], tokenizer: Any) -> None:
        self.works = works
        self.tokenizer = tokenizer
        self.tokens: list[list[int]] = [[] for _ in works]

    def __call__(self, row: int, position: int, token: int) -> bool:
        work = self.works[row]
        del self.tokens[row][position:]  # a retry after out-of-memory starts again at 0
        self.tokens[row].append(token)
        if work.sink is not None:
            work.sink(position, token)
        if work.cancelled is not None and work.cancelled.is_set():
            return True
        if position + 1 >= work.max_new_tokens:
            return True
        if work.stops:
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            return _first_stop(text, work.stops) is not None
        return False


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None
