"""The endpoints: /v1/models, /v1/chat/completions, /v1/completions, /tokenize, /detokenize,
/tokenizer_info, /health and /.

A handler validates and encodes its request (every client mistake is a 4xx here, before the queue),
submits one :class:`.engine.Work` per prompt to the scheduler under its preset's :class:`.engine.BatchKey`
and shapes the results into OpenAI's response (or server-sent-event chunk) format.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..errors import ChatTemplateError
from .engine import BatchKey, Engine, Result, Sampling, Work
from .errors import APIError, bad_request, not_found, queue_full
from .presets import BASE_PRESET, Preset
from .scheduler import Scheduler
from .schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

router = APIRouter()

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's legacy completions default."""


# ---- helpers ------------------------------------------------------------------------------------------

def _state(request: Request) -> Any:
    return request.app.state


def resolve_preset(state: Any, model: str, steer: str | None) -> Preset:
    """The preset a request names, by ``model`` (``BASE`` or ``BASE@PRESET``) and/or ``steer``.

    Raises:
        APIError: 404 for an unknown model or preset, 400 when the two name different presets.
    """
    base, sep, from_model = model.partition("@")
    if base != state.model_id:
        raise not_found(f"the model {model!r} does not exist; GET /v1/models lists {state.model_id!r} and "
                        f"{state.model_id!r}@PRESET for each preset")
    if sep and not from_model:
        raise not_found(f"the model {model!r} names no preset after '@'")
    name = from_model or None
    if steer is not None:
        if name is not None and steer != name:
            raise bad_request(f"model names preset {name!r} but steer names {steer!r}; give one", param="steer")
        name = steer
    name = name or BASE_PRESET
    if name not in state.presets:
        raise not_found(f"no preset {name!r}; this server offers {sorted(state.presets)} (requests can only name the "
                        "operator's presets)", param="steer" if steer is not None else "model", code="preset_not_found")
    return state.presets[name]


def _budget(state: Any, asked: int | None, default: int, param: str) -> int:
    budget = default if asked is None else asked
    if budget > state.config.max_tokens:
        raise bad_request(f"{param} is {budget}; this server allows at most {state.config.max_tokens}", param=param)
    return budget


def _check_length(state: Any, prompt_ids: Sequence[int], budget: int, param: str) -> None:
    engine: Engine = state.engine
    if not prompt_ids:
        raise bad_request("the prompt is empty", param=param)
    limit = state.config.max_prompt_tokens
    if len(prompt_ids) > limit:
        raise bad_request(f"the prompt has {len(prompt_ids)} tokens; this server allows at most {limit}", param=param,
                          code="context_length_exceeded")
    window = engine.context_window
    if window is not None and len(prompt_ids) + budget > window:
        raise bad_request(f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({budget}) exceeds the model's context "
                          f"of {window} tokens", param="max_tokens", code="context_length_exceeded")


def _check_room(state: Any) -> None:
    """Refuse a stream up front when the queue is full (once its 200 headers are sent, errors can only be events)."""
    scheduler: Scheduler = state.scheduler
    if scheduler.queued >= scheduler.max_queue:
        raise queue_full(scheduler.max_queue)


def _key(preset: Preset, sampling: Sampling) -> BatchKey:
    solo = uuid.uuid4().int if sampling.do_sample and sampling.seed is not None else None
    return BatchKey(preset=preset.name, sampling=sampling, solo=solo)


async def _until_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body is already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _submit_all(request: Request, jobs: Sequence[tuple[BatchKey, Work]]) -> list[Result]:
    """Submit every job, wait for all; a client disconnect cancels the ones not yet started."""
    scheduler: Scheduler = _state(request).scheduler
    timeout = _state(request).config.timeout_s
    work = asyncio.ensure_future(asyncio.gather(*(scheduler.submit(k, w, timeout_s=timeout, cancelled=w.cancelled) for k, w in jobs)))
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:  # the client left: cancelling the gather marks its jobs cancelled (running rows stop)
            work.cancel()
            raise APIError(499, "the client closed the connection", code="client_closed")
        return list(work.result())
    finally:
        watcher.cancel()


def _steer_info(preset: Preset, baseline: Any = None, results: Sequence[Result] = (), *, per_choice: bool = False) -> dict[str, Any]:
    """The response's ``refusal_steer`` field: preset and fingerprint, whether each gate fired (a gated preset), the baseline."""
    info: dict[str, Any] = preset.info()
    if any(r.gates_fired for r in results):
        fired = [list(r.gates_fired) for r in results]
        info["gates_fired"] = fired if per_choice else fired[0]
    if baseline is not None:
        info["baseline"] = baseline
    return info


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# ---- info endpoints ----------------------------------------------------------------------------------

@router.get("/")
async def root(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"name": "refusal-steer", "status": "ok", "model": state.model_id, "presets": sorted(state.presets)}


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    scheduler: Scheduler = _state(request).scheduler
    return {"status": "ok", "queued": scheduler.queued, "batches_run": scheduler.batches_run}


def _model_cards(state: Any) -> list[dict[str, Any]]:
    created = int(time.time())
    cards = []
    for name, preset in state.presets.items():
        model = state.model_id if name == BASE_PRESET else f"{state.model_id}@{name}"
        cards.append({"id": model, "object": "model", "created": created, "owned_by": "refusal-steer", "refusal_steer": preset.info()})
    return cards


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _model_cards(_state(request))}


@router.get("/v1/models/{model:path}")
async def model_card(model: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    preset = resolve_preset(state, model, None)
    return next(card for card in _model_cards(state) if card["refusal_steer"]["preset"] == preset.name)


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict[str, Any]:
    state = _state(request)
    tokenizer = state.engine.lm.tokenizer
    return {"model": state.model_id, "eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token,
            "pad_token": tokenizer.pad_token, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
            "chat_template": getattr(tokenizer, "chat_template", None), "vocab_size": len(tokenizer),
            "max_model_len": state.engine.context_window, "tokenizer_class": type(tokenizer).__name__}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    engine: Engine = state.engine
    if body.messages is not None:
        try:
            tokens = list(engine.encode_chat([{"role": _role(m.role), "content": m.text()} for m in body.messages]))
        except ChatTemplateError as exc:
            raise bad_request(str(exc), param="messages") from exc
    else:
        tokens = list(engine.lm.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"])
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.context_window}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    engine: Engine = _state(request).engine
    _check_ids(engine, body.tokens, "tokens")
    return {"prompt": engine.lm.tokenizer.decode(body.tokens)}


def _check_ids(engine: Engine, ids: Sequence[int], param: str) -> None:
    vocab = len(engine.lm.tokenizer)
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param=param)


def _role(role: str) -> str:
    return "system" if role == "developer" else role


# ---- chat completions --------------------------------------------------------------------------------

@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = _state(request)
    engine: Engine = state.engine
    preset = resolve_preset(state, body.model, body.steer)
    budget = _budget(state, body.budget(), state.config.default_max_tokens,
                     "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens")
    messages = [{"role": _role(m.role), "content": m.text()} for m in body.messages]
    try:
        prompt_ids = engine.encode_chat(messages)
    except ChatTemplateError as exc:
        raise bad_request(exc.message, param="messages") from exc
    _check_length(state, prompt_ids, budget, "messages")
    sampling = Sampling.from_request(body.temperature, body.top_p, body.seed)
    work = Work(prompt_ids=prompt_ids, max_new_tokens=budget, stops=body.stops(), cancelled=threading.Event())
    request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        _check_room(state)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_chat_stream(request, preset, _key(preset, sampling), work, body.model, request_id, created, include_usage),
                                 media_type="text/event-stream")
    jobs = [(_key(preset, sampling), work)]
    if body.compare:
        jobs.append((_key(state.presets[BASE_PRESET], sampling), replace(work, cancelled=threading.Event())))
    results = await _submit_all(request, jobs)
    baseline = None
    if body.compare:
        base = results[1]
        baseline = {"message": {"role": "assistant", "content": base.text}, "finish_reason": base.finish_reason, "usage": base.usage,
                    **state.presets[BASE_PRESET].info()}
    result = results[0]
    return {"id": request_id, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": preset.fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                         "finish_reason": result.finish_reason}],
            "usage": result.usage, "refusal_steer": _steer_info(preset, baseline, [result])}


async def _chat_stream(request: Request, preset: Preset, key: BatchKey, work: Work, model: str, request_id: str, created: int,
                       include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI chat chunks, sent as the tokens are generated; the last text chunk completes the final answer."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": preset.fingerprint,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                "refusal_steer": preset.info(), **extra}

    yield _sse(chunk({"role": "assistant", "content": ""}))
    async for item in _stream_tokens(request, key, work):
        if isinstance(item, Result):
            yield _sse({**chunk({}, item.finish_reason), "refusal_steer": _steer_info(preset, None, [item])})
            if include_usage:
                yield _sse({**chunk({}), "choices": [], "usage": item.usage})
        elif isinstance(item, APIError):  # headers are sent already: the error travels as an event
            yield _sse(item.body())
        else:
            yield _sse(chunk({"content": item}))
    yield _sse("[DONE]")


async def _stream_tokens(request: Request, key: BatchKey, work: Work) -> AsyncIterator[str | Result | APIError]:
    """Run ``work`` and yield its text as it grows (pieces), then its :class:`Result` (or an :class:`APIError`).

    Text is held back while it ends in an incomplete character or could be the start of a stop string,
    so what was sent is always a prefix of the final answer; the final piece completes it.
    """
    engine: Engine = _state(request).engine
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    work = replace(work, sink=lambda position, token: loop.call_soon_threadsafe(tokens.put_nowait, (position, token)))
    task = asyncio.ensure_future(_submit_all(request, [(key, work)]))
    ids: list[int] = []
    sent = ""
    try:
        while True:
            getter = asyncio.ensure_future(tokens.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if tokens.empty():
                    break
                continue
            position, token = getter.result()
            del ids[position:]
            ids.append(token)
            text = _safe_prefix(engine.lm.tokenizer.decode(ids, skip_special_tokens=True), work.stops)
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent):]
                sent = text
        try:
            (result,) = task.result()
        except APIError as exc:
            yield exc
            return
        if result.text.startswith(sent) and len(result.text) > len(sent):
            yield result.text[len(sent):]
        yield result
    finally:
        if not task.done():  # the client went away mid-stream: stop the row
            if work.cancelled is not None:
                work.cancelled.set()
            task.cancel()


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of a growing answer that can be sent now (see :func:`_stream_tokens`)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
    if cut is not None:
        return text[:cut]
    text = text.rstrip("\ufffd")
    for stop in stops:  # hold back a tail that may grow into a stop string
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                return text[: len(text) - n]
    return text


# ---- legacy completions ------------------------------------------------------------------------------

def _completion_prompts(engine: Engine, prompt: Any) -> list[tuple[str, tuple[int, ...]]]:
    """``(text, token ids)`` per prompt, from a string, a list of strings, a token list or a list of token lists."""
    if isinstance(prompt, str):
        return [(prompt, engine.encode_text(prompt))]
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append((p, engine.encode_text(p)))
        else:
            _check_ids(engine, p, "prompt")
            out.append((engine.lm.tokenizer.decode(list(p)), tuple(p)))
    return out


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = _state(request)
    engine: Engine = state.engine
    preset = resolve_preset(state, body.model, body.steer)
    budget = _budget(state, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, "max_tokens")
    if body.logprobs is not None and body.logprobs > state.config.max_logprobs:
        raise bad_request(f"logprobs is {body.logprobs}; this server allows at most {state.config.max_logprobs}", param="logprobs")
    prompts = _completion_prompts(engine, body.prompt)
    if len(prompts) > state.config.max_batch * 4:
        raise bad_request(f"{len(prompts)} prompts in one request; this server takes at most {state.config.max_batch * 4}", param="prompt")
    for _text, ids in prompts:
        _check_length(state, ids, budget, "prompt")
    if body.stream and len(prompts) != 1:
        raise bad_request("stream takes a single prompt", param="stream")
    sampling = Sampling.from_request(body.temperature, body.top_p, body.seed)
    works = [Work(prompt_ids=ids, max_new_tokens=budget, stops=body.stops(), logprobs=body.logprobs, cancelled=threading.Event())
             for _text, ids in prompts]
    request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        _check_room(state)
        return StreamingResponse(_completion_stream(request, preset, _key(preset, sampling), works[0], prompts[0][0], body, request_id, created),
                                 media_type="text/event-stream")
    jobs = [(_key(preset, sampling), w) for w in works]
    if body.compare:
        jobs += [(_key(state.presets[BASE_PRESET], sampling), replace(w, cancelled=threading.Event())) for w in works]
    results = await _submit_all(request, jobs)
    choices = [_completion_choice(engine, i, text, r, body.echo, body.logprobs) for i, ((text, _ids), r) in enumerate(zip(prompts, results))]
    baseline = None
    if body.compare:
        baseline = {"choices": [_completion_choice(engine, i, text, r, body.echo, body.logprobs)
                                for i, ((text, _ids), r) in enumerate(zip(prompts, results[len(works):]))],
                    **state.presets[BASE_PRESET].info()}
    usage = _sum_usage(results[: len(works)])
    return {"id": request_id, "object": "text_completion", "created": created, "model": body.model,
            "system_fingerprint": preset.fingerprint, "choices": choices, "usage": usage,
            "refusal_steer": _steer_info(preset, baseline, results[: len(works)], per_choice=True)}


def _sum_usage(results: Sequence[Result]) -> dict[str, int]:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: sum(r.usage[k] for r in results) for k in keys}


def _completion_choice(engine: Engine, index: int, prompt_text: str, result: Result, echo: bool, logprobs: int | None) -> dict[str, Any]:
    text = (prompt_text + result.text) if echo else result.text
    return {"index": index, "text": text, "finish_reason": result.finish_reason,
            "logprobs": _legacy_logprobs(engine, prompt_text, result, echo) if logprobs is not None else None}


def _legacy_logprobs(engine: Engine, prompt_text: str, result: Result, echo: bool) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object: ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``.

    With ``echo`` the prompt's tokens come first; the very first token has no log-prob (``null``), as
    in OpenAI's answers and as lm-evaluation-harness expects. ``text_offset`` counts characters into the
    choice's ``text``. A token that is only part of a character is named by its vocabulary entry.
    """
    assert result.logprobs is not None
    decode = engine.lm.tokenizer.decode
    n_prompt = len(result.prompt_ids)
    ids = list(result.prompt_ids) + list(result.token_ids)
    first = 0 if echo else n_prompt
    # logprobs[i] / top[i] belong to ids[i + 1].
    token_logprobs: list[float | None] = [None] + list(result.logprobs.logprobs)
    text_of = _token_text(engine.lm.tokenizer)
    tops: list[dict[str, float] | None] = [None] + [_top_dict(text_of, t) for t in result.logprobs.top] \
        if result.logprobs.top else [None] + [{} for _ in result.logprobs.logprobs]
    tokens = [text_of(t) for t in ids[first:]]
    start = len(decode(ids[:first])) if first else 0
    offsets = [max(0, len(decode(ids[:i])) - start) for i in range(first, len(ids))]
    return {"tokens": tokens, "token_logprobs": token_logprobs[first:], "top_logprobs": tops[first:], "text_offset": offsets}


def _token_text(tokenizer: Any) -> Any:
    """A token's text: its decoding, or its vocabulary entry when it is part of a character (byte-level BPE
    pieces decode to U+FFFD alone, and distinct tokens must stay distinct keys of ``top_logprobs``)."""
    def text_of(token_id: int) -> str:
        text = tokenizer.decode([token_id])
        return text if "\ufffd" not in text else str(tokenizer.convert_ids_to_tokens(token_id))

    return text_of


def _top_dict(text_of: Any, top: Sequence[tuple[int, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for token_id, logprob in top:  # best first: a later id with the same text keeps the better value
        out.setdefault(text_of(token_id), logprob)
    return out


async def _completion_stream(request: Request, preset: Preset, key: BatchKey, work: Work, prompt_text: str, body: CompletionRequest,
                             request_id: str, created: int) -> AsyncIterator[bytes]:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {"id": request_id, "object": "text_completion", "created": created, "model": body.model,
                "system_fingerprint": preset.fingerprint,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], "refusal_steer": preset.info()}

    if body.echo:
        yield _sse(chunk(prompt_text))
    async for item in _stream_tokens(request, key, work):
        if isinstance(item, Result):
            yield _sse({**chunk("", item.finish_reason), "refusal_steer": _steer_info(preset, None, [item], per_choice=True)})
            if body.stream_options and body.stream_options.include_usage:
                yield _sse({**chunk(""), "choices": [], "usage": item.usage})
        elif isinstance(item, APIError):
            yield _sse(item.body())
        else:
            yield _sse(chunk(item))
    yield _sse("[DONE]")
