"""The real ``openai`` client against uvicorn on 127.0.0.1 (a thread in this process), tiny model."""

from __future__ import annotations

import json

import pytest

from refusal_steer.generation import generate, generate_from_ids
from refusal_steer.interventions import parse_steer
from refusal_steer.scoring import token_logprobs

from .conftest import API_KEY

openai = pytest.importorskip("openai", reason="the openai client is in the serve-test extra (pip install -e '.[serve-test]')")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def oa(live_server):
    return openai.OpenAI(base_url=f"{live_server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_models_list(oa, presets):
    ids = [m.id for m in oa.models.list().data]
    assert ids == ["tiny"] + [f"tiny@{name}" for name in presets if name != "none"]
    card = oa.models.retrieve("tiny@ablated")
    assert card.id == "tiny@ablated" and card.model_extra["refusal_steer"] == presets["ablated"].info()
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("tiny@nope")


def test_chat_completion_matches_library(oa, lm, preset_specs):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"}]
    reply = oa.chat.completions.create(model="tiny@ablated", messages=messages, max_tokens=6, temperature=0)
    expected = generate(lm, [messages], parse_steer(preset_specs["ablated"], lm), max_new_tokens=6, progress=False)[0]
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.completion_tokens == expected.n_new_tokens and reply.usage.prompt_tokens == expected.n_prompt_tokens
    assert reply.model_extra["refusal_steer"]["preset"] == "ablated"
    by_body = oa.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0, extra_body={"steer": "ablated"})
    assert by_body.choices[0].message.content == expected.text


def test_chat_streaming(oa, lm, preset_specs):
    messages = [{"role": "user", "content": "Write a poem about the sea."}]
    stream = oa.chat.completions.create(model="tiny@added", messages=messages, max_tokens=6, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = generate(lm, [messages], parse_steer(preset_specs["added"], lm), max_new_tokens=6, progress=False)[0]
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].usage.completion_tokens == expected.n_new_tokens


def test_completions(oa, lm, preset_specs):
    reply = oa.completions.create(model="tiny@filed", prompt=["The quick brown fox", "Hi"], max_tokens=5, temperature=0)
    steer = parse_steer(preset_specs["filed"], lm)
    for choice, prompt in zip(sorted(reply.choices, key=lambda c: c.index), ["The quick brown fox", "Hi"]):
        ids = list(lm.tokenizer(prompt)["input_ids"])
        assert choice.text == generate_from_ids(lm, [ids], steer, max_new_tokens=5)[0].text


def test_completions_streaming(oa):
    whole = oa.completions.create(model="tiny", prompt="The sea", max_tokens=5, temperature=0).choices[0].text
    streamed = "".join(c.choices[0].text for c in oa.completions.create(model="tiny", prompt="The sea", max_tokens=5,
                                                                          temperature=0, stream=True) if c.choices)
    assert streamed == whole


def test_echo_logprobs_for_likelihood_tasks(oa, lm, preset_specs):
    """What lm-eval's local-completions sends for loglikelihood: echo, logprobs=1, max_tokens 0 or 1, token ids."""
    ids = list(lm.tokenizer("The quick brown fox jumps")["input_ids"])
    steer = parse_steer(preset_specs["ablated"], lm)
    expected = token_logprobs(lm, [ids], None, steer, top_k=1)[0]
    reply = oa.completions.create(model="tiny@ablated", prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = reply.choices[0].logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(list(expected.logprobs), abs=1e-6)
    assert len(lp.tokens) == len(ids) == len(lp.text_offset) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == reply.choices[0].text
    # lm-eval's parse_logprobs: sum over the continuation, greedy when each token is the top alternative.
    one = oa.completions.create(model="tiny@ablated", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp1 = one.choices[0].logprobs
    assert len(lp1.token_logprobs) == len(ids) + 1
    assert lp1.token_logprobs[1:len(ids)] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)
    for token_lp, top in zip(lp1.token_logprobs[1:], lp1.top_logprobs[1:]):
        assert len(top) == 1 and token_lp <= max(top.values()) + 1e-9
    assert lp1.token_logprobs[-1] == max(lp1.top_logprobs[-1].values())  # the greedy token is the top one


def test_bad_key_and_unknown_preset_through_the_client(oa, live_server):
    bad = openai.OpenAI(base_url=f"{live_server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError) as info:
        oa.chat.completions.create(model="tiny@nope", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert info.value.body["code"] == "preset_not_found"
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="tiny", messages=[], max_tokens=2)


def test_tokenizer_endpoints_for_lm_eval(live_server, lm):
    import httpx2 as httpx

    headers = {"Authorization": f"Bearer {API_KEY}"}
    info = httpx.get(f"{live_server}/tokenizer_info", headers=headers).json()
    assert info["eos_token"] == lm.tokenizer.eos_token and info["chat_template"] == lm.tokenizer.chat_template
    tokens = httpx.post(f"{live_server}/tokenize", json={"prompt": "The sea", "add_special_tokens": False}, headers=headers).json()
    assert tokens["tokens"] == list(lm.tokenizer("The sea", add_special_tokens=False)["input_ids"])
    text = httpx.post(f"{live_server}/detokenize", json={"tokens": tokens["tokens"]}, headers=headers).json()
    assert text == {"prompt": "The sea"}
    assert httpx.get(f"{live_server}/health").json()["status"] == "ok"
    assert httpx.get(f"{live_server}/").status_code == 200
    raw = httpx.post(f"{live_server}/v1/chat/completions", headers=headers,
                     json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True})
    events = [line.removeprefix("data: ") for line in raw.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"
    assert raw.headers["content-type"].startswith("text/event-stream")


def test_tokenize_messages_is_the_served_chat_prompt(live_server, lm):
    import httpx2 as httpx

    from refusal_steer.generation import encode_prompts

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    got = httpx.post(f"{live_server}/tokenize", json={"messages": messages}, headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert got["tokens"] == encode_prompts(lm, [messages])[0]
