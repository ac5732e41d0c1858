"""Token streaming and cancellation: chunks arrive as tokens are generated, stop strings are never
sent, and a client that leaves mid-answer stops its row (the other rows of its batch are unchanged)."""

from __future__ import annotations

import json
import threading

import pytest

from refusal_steer.generation import generate_from_ids
from refusal_steer.server.engine import BatchKey, Sampling, Work

from .conftest import API_KEY

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea."]


def _events(text):
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_streamed_text_equals_the_answer_with_stop_strings(client):
    body = {"model": "tiny@ablated", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 0}
    full = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    stop = full[4:6]
    for extra in ({}, {"stop": [stop]}, {"stop": [stop, "zzz-never"]}):
        answer = client.post("/v1/chat/completions", json={**body, **extra}).json()["choices"][0]
        events = _events(client.post("/v1/chat/completions", json={**body, **extra, "stream": True}).text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
        assert "".join(pieces) == answer["message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == answer["finish_reason"]
        assert sum(1 for p in pieces if p) > 1  # sent in several pieces, not one block
        if extra:
            assert stop not in "".join(pieces) and answer["finish_reason"] == "stop"


def test_a_cancelled_row_stops_and_its_batch_mates_are_unchanged(lm, presets, client):
    engine = client.app.state.engine
    steer = list(presets["added"].interventions)
    cancel = threading.Event()
    sunk = []

    def sink(position, token):
        sunk.append(token)
        if position == 1:
            cancel.set()  # the client leaves after two tokens

    ids = [engine.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    works = [Work(prompt_ids=ids[0], max_new_tokens=10), Work(prompt_ids=ids[1], max_new_tokens=10, cancelled=cancel, sink=sink),
             Work(prompt_ids=ids[2], max_new_tokens=10)]
    results = engine.run_batch(BatchKey(preset="added", sampling=Sampling()), works)
    alone = generate_from_ids(lm, ids, steer, max_new_tokens=10)
    assert results[0].token_ids == alone[0].token_ids and results[2].token_ids == alone[2].token_ids
    assert len(results[1].token_ids) == 2 == len(sunk) and results[1].token_ids == alone[1].token_ids[:2]


def test_client_disconnect_mid_stream_stops_generation(live):
    import time

    import httpx2 as httpx

    url, app = live
    scheduler = app.state.scheduler
    finished = []
    inner = scheduler.run_batch
    scheduler.run_batch = lambda key, works: finished.extend(inner(key, works)) or finished[-len(works):]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "tiny@plain", "messages": [{"role": "user", "content": "Write a poem about the sea."}], "max_tokens": 200,
            "temperature": 0}
    try:
        full = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120).json()
        assert full["usage"]["completion_tokens"] == 200  # the tiny model does not stop by itself here
        finished.clear()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=120) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # the first token arrived: leave
        deadline = time.monotonic() + 60
        while not finished:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert len(finished[0].token_ids) < 200
    finally:
        scheduler.run_batch = inner


def test_client_timeout_cancels_a_running_answer(live, lm, monkeypatch):
    """A non-streaming client that gives up (here: its own 0.3 s timeout) stops its row too."""
    import time

    import httpx2 as httpx

    url, app = live
    # On an idle CPU the tiny model writes 200 tokens in under 0.3 s; 10 ms per forward makes the answer take
    # over 2 s, so the client's timeout always comes first.
    fast = lm.model.forward
    monkeypatch.setattr(lm.model, "forward", lambda *a, **k: (time.sleep(0.01), fast(*a, **k))[1])
    scheduler = app.state.scheduler
    finished = []
    inner = scheduler.run_batch
    scheduler.run_batch = lambda key, works: finished.extend(inner(key, works)) or finished[-len(works):]
    body = {"model": "tiny@plain", "messages": [{"role": "user", "content": "Write a poem about the sea."}], "max_tokens": 200,
            "temperature": 0}
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.3)
        deadline = time.monotonic() + 60
        while not finished:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert len(finished[0].token_ids) < 200
    finally:
        scheduler.run_batch = inner
