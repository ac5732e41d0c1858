"""A steer served is the steer measured: concurrent, batched requests under different presets each get
exactly the greedy answer of library ``generate`` with that preset's steer alone."""

from __future__ import annotations

import asyncio

import pytest

from refusal_steer.generation import generate, generate_from_ids
from refusal_steer.hooks import installed_interventions
from refusal_steer.interventions import fingerprint, parse_steer
from refusal_steer.server.engine import BatchKey, Sampling, Work

pytestmark = pytest.mark.usefixtures("one_thread")

from .conftest import PROMPTS

MAX_TOKENS = 6


def _expected(lm, spec, prompts, max_tokens=MAX_TOKENS):
    return [c.text for c in generate(lm, prompts, parse_steer(spec, lm), max_new_tokens=max_tokens, progress=False)]


def test_presets_are_parsed_like_steer_flags(lm, presets, preset_specs):
    assert list(presets) == ["none", *preset_specs]
    for name, spec in preset_specs.items():
        assert presets[name].fingerprint == fingerprint(parse_steer(spec, lm))
    assert presets["none"].fingerprint == presets["plain"].fingerprint == fingerprint([])
    assert len({presets[n].fingerprint for n in preset_specs}) == len(preset_specs)


def test_concurrent_requests_under_presets_equal_library_generate(lm, presets, preset_specs, client):
    """Six presets (none, ablation, actadd, a steer file, an SAE latent clamp, a gate) x three prompts, all in flight
    at once, batched by preset in the worker; the gated answers say whether the gate fired."""
    app = client.app
    expected = {name: _expected(lm, spec, PROMPTS) for name, spec in preset_specs.items()}
    # The steers differ from each other on these prompts, so the test cannot pass with hooks mixed up.
    assert len({tuple(v) for v in expected.values()}) == len(preset_specs)
    scheduler = app.state.scheduler
    before = scheduler.batches_run

    async def ask(name, prompt, via_model):
        body = {"model": f"tiny@{name}" if via_model else "tiny", "messages": [{"role": "user", "content": prompt}],
                "max_tokens": MAX_TOKENS, "temperature": 0}
        if not via_model:
            body["steer"] = name
        import httpx2 as httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return name, prompt, (await http.post("/v1/chat/completions", json=body)).json()

    async def main():
        jobs = [ask(name, prompt, i % 2 == 0) for i, (name, prompt) in
                enumerate((n, p) for p in PROMPTS for n in preset_specs)]
        return await asyncio.gather(*jobs)

    answers = asyncio.run(main())
    fired = [c.gates_fired for c in generate(lm, PROMPTS, parse_steer(preset_specs["gated"], lm), max_new_tokens=MAX_TOKENS,
                                              progress=False)]
    assert sorted(fired) == [(False,), (True,), (True,)]  # the threshold splits the prompts
    for name, prompt, body in answers:
        assert body["choices"][0]["message"]["content"] == expected[name][PROMPTS.index(prompt)], (name, prompt)
        info = {"preset": name, "fingerprint": presets[name].fingerprint}
        if name == "gated":
            info["gates_fired"] = list(fired[PROMPTS.index(prompt)])
        assert body["refusal_steer"] == info
    runs = scheduler.batches_run - before
    assert runs < len(answers), "requests of one preset should share batches"
    assert max(scheduler.batch_sizes[before:]) > 1
    # No hooks outlive their batch: nothing is installed and the plain model answers as before.
    assert installed_interventions(lm) == []
    assert _expected(lm, "none", PROMPTS) == expected["plain"]


def test_engine_batches_one_preset_and_cuts_budgets(lm, presets, preset_specs, client):
    """Rows with smaller budgets in a batch run to the largest one are cut exactly like a shorter run."""
    engine = client.app.state.engine
    steer = parse_steer(preset_specs["ablated"], lm)
    works = [Work(prompt_ids=engine.encode_chat([{"role": "user", "content": p}]), max_new_tokens=n)
             for p, n in zip(PROMPTS, (2, 5, 8))]
    results = engine.run_batch(BatchKey(preset="ablated", sampling=Sampling()), works)
    for work, result in zip(works, results):
        alone = generate_from_ids(lm, [work.prompt_ids], steer, max_new_tokens=work.max_new_tokens)[0]
        assert result.token_ids == alone.token_ids and result.text == alone.text
        assert result.finish_reason == alone.finish_reason


def test_raw_completion_equals_generate_from_ids(lm, preset_specs, client):
    steer = parse_steer(preset_specs["added"], lm)
    ids = list(lm.tokenizer("The quick brown fox")["input_ids"])
    alone = generate_from_ids(lm, [ids], steer, max_new_tokens=5)[0]
    body = client.post("/v1/completions", json={"model": "tiny@added", "prompt": "The quick brown fox", "max_tokens": 5,
                                                "temperature": 0}).json()
    assert body["choices"][0]["text"] == alone.text
    tokens = client.post("/v1/completions", json={"model": "tiny@added", "prompt": ids, "max_tokens": 5, "temperature": 0}).json()
    assert tokens["choices"][0]["text"] == alone.text


def test_compare_returns_the_baseline_beside_the_steered_answer(lm, preset_specs, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": [{"type": "text", "text": "Tell me a joke"}]}]
    flat = [dict(m, content=m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]) for m in messages]
    body = client.post("/v1/chat/completions", json={"model": "tiny", "steer": "ablated", "messages": messages, "max_tokens": 5,
                                                     "temperature": 0, "compare": True}).json()
    assert body["choices"][0]["message"]["content"] == _expected(lm, preset_specs["ablated"], [flat], 5)[0]
    baseline = body["refusal_steer"]["baseline"]
    assert baseline["message"]["content"] == _expected(lm, "none", [flat], 5)[0]
    assert baseline["preset"] == "none" and body["refusal_steer"]["preset"] == "ablated"


def test_stop_strings_and_usage(lm, client):
    full = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                                     "max_tokens": 8, "temperature": 0}).json()
    text = full["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] == 8 and full["choices"][0]["finish_reason"] == "length"
    stop = text[3:5]
    cut = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                                    "max_tokens": 8, "temperature": 0, "stop": [stop]}).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] <= 8


def test_seeded_sampling_is_reproducible(client):
    body = {"model": "tiny@added", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 1.0, "seed": 7}
    first = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    again = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert first == again


def test_completion_logprobs_of_generated_tokens(lm, client):
    """Without echo, logprobs cover only the generated tokens; greedy tokens are each the top alternative."""
    body = client.post("/v1/completions", json={"model": "tiny@ablated", "prompt": "The quick brown fox", "max_tokens": 4,
                                                "temperature": 0, "logprobs": 2}).json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == body["usage"]["completion_tokens"] == 4
    assert lp["text_offset"][0] == 0
    for token, token_lp, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 2 and top[token] == token_lp == max(top.values())  # part-of-a-character tokens stay distinct


def test_completions_with_several_prompts_and_compare(lm, preset_specs, client):
    prompts = ["The sea", "Bread is"]
    body = client.post("/v1/completions", json={"model": "tiny@filed", "prompt": prompts, "max_tokens": 3, "temperature": 0,
                                                "compare": True}).json()
    steer = parse_steer(preset_specs["filed"], lm)
    ids = [list(lm.tokenizer(p)["input_ids"]) for p in prompts]
    assert [c["text"] for c in body["choices"]] == [c.text for c in generate_from_ids(lm, ids, steer, max_new_tokens=3)]
    assert [c["text"] for c in body["refusal_steer"]["baseline"]["choices"]] == [c.text for c in generate_from_ids(lm, ids, max_new_tokens=3)]
    assert body["usage"]["completion_tokens"] == sum(len(c.token_ids) for c in generate_from_ids(lm, ids, steer, max_new_tokens=3))
