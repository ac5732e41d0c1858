"""Every bad input gets an OpenAI-style JSON error with the right status, never a traceback."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from refusal_steer.server.errors import APIError
from refusal_steer.server.scheduler import Scheduler

from .conftest import API_KEY, make_client

pytestmark = pytest.mark.usefixtures("one_thread")

CHAT = "/v1/chat/completions"


def _chat(**extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0, **extra}


def _error(response, status, param=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in response.text
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def test_malformed_json_is_400(client):
    _error(client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_wrong_type_is_400(client):
    _error(client.post(CHAT, json=_chat(max_tokens="5")), 400, "max_tokens")
    _error(client.post(CHAT, json=_chat(temperature="hot")), 400, "temperature")


def test_empty_messages_is_400(client):
    _error(client.post(CHAT, json=_chat(messages=[])), 400, "messages")


def test_missing_field_is_400(client):
    _error(client.post(CHAT, json={"messages": [{"role": "user", "content": "Hi"}]}), 400, "model")


def test_n_above_one_is_400(client):
    assert "n must be 1" in _error(client.post(CHAT, json=_chat(n=2)), 400)["message"]


def test_unknown_field_is_400(client):
    _error(client.post(CHAT, json=_chat(max_token=3)), 400, "max_token")


def test_non_text_content_part_is_400(client):
    part = {"type": "image_url", "image_url": {"url": "http://x"}}
    _error(client.post(CHAT, json=_chat(messages=[{"role": "user", "content": [part]}])), 400)


def test_unknown_role_is_400(client):
    _error(client.post(CHAT, json=_chat(messages=[{"role": "tool", "content": "x"}])), 400)


def test_max_tokens_above_limit_is_400(lm, presets):
    with make_client(lm, presets, max_tokens=4, default_max_tokens=4) as c:
        _error(c.post(CHAT, json=_chat(max_tokens=5)), 400, "max_tokens")
        _error(c.post(CHAT, json=_chat(max_tokens=None, max_completion_tokens=9)), 400, "max_completion_tokens")
        _error(c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 5}), 400, "max_tokens")


def test_prompt_too_long_is_400(lm, presets):
    with make_client(lm, presets, max_prompt_tokens=8) as c:
        error = _error(c.post(CHAT, json=_chat()), 400, "messages")
        assert error["code"] == "context_length_exceeded"


def test_prompt_plus_budget_beyond_context_is_400(client):
    long = "bread " * 120  # the tiny model's context is 256 positions
    error = _error(client.post("/v1/completions", json={"model": "tiny", "prompt": long, "max_tokens": 200}), 400, "max_tokens")
    assert error["code"] == "context_length_exceeded"


def test_bad_token_ids_are_400(client):
    _error(client.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2, 10**6]}), 400, "prompt")
    _error(client.post("/detokenize", json={"tokens": [-1]}), 400, "tokens")


def test_too_many_logprobs_is_400(client):
    _error(client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "logprobs": 21}), 400, "logprobs")


def test_compare_with_stream_is_400(client):
    _error(client.post(CHAT, json=_chat(compare=True, stream=True)), 400)


def test_unknown_model_is_404(client):
    assert _error(client.post(CHAT, json=_chat(model="gpt-4")), 404, "model")["code"] == "model_not_found"


def test_unknown_preset_is_404(client):
    assert _error(client.post(CHAT, json=_chat(model="tiny@nope")), 404, "model")["code"] == "preset_not_found"
    assert _error(client.post(CHAT, json=_chat(steer="nope")), 404, "steer")["code"] == "preset_not_found"


def test_paths_are_never_steers(client, preset_specs):
    """A request can only name a preset: a short form or a file path is an unknown preset."""
    for steer in (preset_specs["ablated"], preset_specs["filed"], "ablate:/tmp"):
        _error(client.post(CHAT, json=_chat(steer=steer)), 404, "steer")


def test_model_and_steer_naming_different_presets_is_400(client):
    _error(client.post(CHAT, json=_chat(model="tiny@ablated", steer="added")), 400, "steer")


def test_unknown_route_is_404_json(client):
    _error(client.get("/v1/nothing"), 404)


def test_bad_api_key_is_401(lm, presets):
    with make_client(lm, presets, api_key=API_KEY) as c:
        _error(c.post(CHAT, json=_chat()), 401)
        _error(c.post(CHAT, json=_chat(), headers={"Authorization": "Bearer wrong"}), 401)
        _error(c.get("/v1/models", headers={"Authorization": API_KEY}), 401)
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_body_too_large_is_413(lm, presets):
    with make_client(lm, presets, max_body_bytes=200) as c:
        _error(c.post(CHAT, json=_chat(messages=[{"role": "user", "content": "x" * 300}])), 413)

        def chunks():
            yield b'{"model": "tiny", "messages": ['
            for _ in range(20):
                yield b'{"role": "user", "content": "xxxxxxxxxxxx"},'
            yield b"]}"

        _error(c.post(CHAT, content=chunks(), headers={"content-type": "application/json"}), 413)  # chunked, no length


class _Gate:
    """Blocks the worker's batches until released, so the queue can be filled."""

    def __init__(self, scheduler):
        self.release = threading.Event()
        self.running = threading.Event()
        inner = scheduler.run_batch

        def run_batch(key, works):
            self.running.set()
            self.release.wait(30)
            return inner(key, works)

        scheduler.run_batch = run_batch


def _in_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("response", fn()), daemon=True)
    thread.start()
    return thread, out


def _wait(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_queue_full_is_429(lm, presets):
    with make_client(lm, presets, max_queue=1) as c:
        gate = _Gate(c.app.state.scheduler)
        first, first_out = _in_thread(lambda: c.post(CHAT, json=_chat()))
        _wait(gate.running.is_set)                      # the worker holds request 1
        second, second_out = _in_thread(lambda: c.post(CHAT, json=_chat()))
        _wait(lambda: c.app.state.scheduler.queued == 1)  # request 2 waits
        assert _error(c.post(CHAT, json=_chat()), 429)["code"] == "queue_full"
        assert _error(c.post(CHAT, json=_chat(stream=True)), 429)["code"] == "queue_full"  # a real status, not an event
        gate.release.set()
        first.join(30), second.join(30)
        assert first_out["response"].status_code == second_out["response"].status_code == 200


def test_timeout_is_503(lm, presets):
    with make_client(lm, presets, timeout_s=0.2) as c:
        gate = _Gate(c.app.state.scheduler)
        assert _error(c.post(CHAT, json=_chat()), 503)["code"] == "timeout"
        gate.release.set()


def test_given_up_jobs_never_run():
    """A job whose client left (timeout or disconnect) before its batch started is dropped."""
    seen = []
    release = threading.Event()

    def run_batch(key, works):
        seen.extend(works)
        if works == ["blocker"]:
            release.wait(10)
        return list(works)

    scheduler = Scheduler(run_batch, max_wait_s=0).start()

    async def main():
        blocker = asyncio.ensure_future(scheduler.submit("a", "blocker", timeout_s=10))
        while not seen:
            await asyncio.sleep(0.005)
        with pytest.raises(APIError, match="did not finish"):
            await scheduler.submit("a", "given-up", timeout_s=0.05)  # times out while queued
        cancelled = asyncio.ensure_future(scheduler.submit("b", "disconnected", timeout_s=10))
        await asyncio.sleep(0.02)
        cancelled.cancel()                                            # what a client disconnect does
        await asyncio.sleep(0.02)
        release.set()
        assert await blocker == "blocker"
        assert await scheduler.submit("a", "after", timeout_s=10) == "after"

    asyncio.run(main())
    scheduler.stop()
    assert seen == ["blocker", "after"]


def test_server_errors_are_json_500(lm, presets):
    with make_client(lm, presets) as c:
        def broken(key, works):
            raise RuntimeError("boom")

        c.app.state.scheduler.run_batch = broken
        error = _error(c.post(CHAT, json=_chat()), 500)
        assert "boom" not in error["message"]
