"""Batched generation: batch == one at a time, cache on == off, no steer == plain model.generate."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ResourceExhaustedError, ShapeMismatchError
from refusal_steer.generation import Completion, encode_prompts, generate, left_pad
from refusal_steer.interventions import Add

PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea and the moon, please."]
N_NEW = 6


pytestmark = pytest.mark.usefixtures("one_thread")


def _steer(lm, positions="all"):
    # Large enough to change greedy tokens of a tiny random model.
    vector = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1)) * 2
    return [Add(vector, "resid_pre.1", positions=positions)]


def _tokens(completions):
    return [c.token_ids for c in completions]


def test_batched_equals_one_at_a_time(tiny_lm):
    for interventions in ([], _steer(tiny_lm)):
        batched = generate(tiny_lm, PROMPTS, interventions, max_new_tokens=N_NEW, batch_size=3, progress=False)
        single = generate(tiny_lm, PROMPTS, interventions, max_new_tokens=N_NEW, batch_size=1, progress=False)
        assert _tokens(batched) == _tokens(single)
    plain = generate(tiny_lm, PROMPTS, max_new_tokens=N_NEW, batch_size=3, progress=False)
    assert _tokens(plain) != _tokens(batched), "the steer should change the tokens"


def test_cache_on_equals_cache_off(tiny_lm):
    # Steering only generated tokens needs the prompt boundary also when every step re-runs the prefix.
    steer = _steer(tiny_lm, positions="generated")
    cached = generate(tiny_lm, PROMPTS, steer, max_new_tokens=N_NEW, batch_size=3, progress=False)
    uncached = generate(tiny_lm, PROMPTS, steer, max_new_tokens=N_NEW, batch_size=3, use_cache=False, progress=False)
    assert _tokens(cached) == _tokens(uncached)


def test_no_interventions_equals_plain_model_generate(tiny_lm):
    ours = generate(tiny_lm, PROMPTS, [], max_new_tokens=N_NEW, batch_size=3, progress=False)
    batch = left_pad(encode_prompts(tiny_lm, PROMPTS), tiny_lm.tokenizer.pad_token_id)
    with torch.no_grad():
        out = tiny_lm.model.generate(**batch, max_new_tokens=N_NEW, do_sample=False, pad_token_id=tiny_lm.tokenizer.pad_token_id)
    reference = out[:, batch["input_ids"].shape[1]:]
    for row, completion in enumerate(ours):
        assert list(completion.token_ids) == reference[row, : completion.n_new_tokens].tolist()


def test_seeded_sampling_is_reproducible(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    kwargs = dict(max_new_tokens=N_NEW, do_sample=True, temperature=1.0, top_p=0.95, batch_size=3, progress=False)
    first = generate(lm, PROMPTS, seed=7, **kwargs)
    torch.manual_seed(123)  # the global RNG must not matter
    second = generate(lm, PROMPTS, seed=7, **kwargs)
    other = generate(lm, PROMPTS, seed=8, **kwargs)
    assert _tokens(first) == _tokens(second)
    assert _tokens(first) != _tokens(other)


def test_completions_in_input_order_with_counts(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    completions = generate(lm, PROMPTS, max_new_tokens=N_NEW, batch_size=2, progress=False)
    encoded = encode_prompts(lm, PROMPTS)
    for prompt, tokens, completion in zip(PROMPTS, encoded, completions):
        assert isinstance(completion, Completion) and completion.prompt == prompt
        assert completion.n_prompt_tokens == len(tokens)
        assert completion.n_new_tokens == len(completion.token_ids) <= N_NEW
        assert completion.finish_reason == ("stop" if completion.token_ids[-1] == lm.tokenizer.eos_token_id else "length")
        assert completion.to_dict()["text"] == completion.text
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    (answer,) = generate(lm, [conversation], max_new_tokens=2, progress=False)
    assert answer.prompt == conversation


def test_out_of_memory_halves_the_batch(make_tiny_lm, monkeypatch):
    lm = make_tiny_lm("qwen2")
    expected = _tokens(generate(lm, PROMPTS, max_new_tokens=N_NEW, batch_size=1, progress=False))
    real = lm.model.generate
    sizes = []

    def flaky(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(**kwargs)

    monkeypatch.setattr(lm.model, "generate", flaky)
    assert _tokens(generate(lm, PROMPTS, max_new_tokens=N_NEW, batch_size=4, progress=False)) == expected
    assert sizes[:2] == [3, 1]  # 3 prompts at batch size 4 run as one batch of 3, then halve to 1

    monkeypatch.setattr(lm.model, "generate", lambda **kw: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(ResourceExhaustedError):
        generate(lm, PROMPTS, max_new_tokens=N_NEW, batch_size=2, progress=False)


def test_invalid_intervention_fails_before_generating(make_tiny_lm, monkeypatch):
    lm = make_tiny_lm("qwen2")
    monkeypatch.setattr(lm.model, "generate", lambda **kw: pytest.fail("generate ran"))
    with pytest.raises(ShapeMismatchError):
        generate(lm, PROMPTS, [Add(torch.randn(lm.d_model + 1), "resid_pre.0")], progress=False)


def test_generate_from_ids_is_what_generate_runs(make_tiny_lm):
    from refusal_steer.errors import ConfigError
    from refusal_steer.generation import generate_from_ids

    lm = make_tiny_lm("qwen2")
    prompts = ["How do I bake bread?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    by_text = generate(lm, prompts, max_new_tokens=6, progress=False)
    by_ids = generate_from_ids(lm, encode_prompts(lm, prompts), prompts=prompts, max_new_tokens=6)
    assert by_text == by_ids
    with pytest.raises(ConfigError):
        generate_from_ids(lm, [[]], max_new_tokens=2)


def test_on_token_sees_every_token_and_ends_only_its_row(make_tiny_lm):
    from refusal_steer.generation import generate_from_ids

    lm = make_tiny_lm("qwen2")
    encoded = encode_prompts(lm, ["How do I bake bread?", "Hi", "Write a poem about the sea."])
    plain = generate_from_ids(lm, encoded, max_new_tokens=6)
    seen: dict[int, list[int]] = {}

    def on_token(index, position, token):
        seen.setdefault(index, []).append(token)
        assert position == len(seen[index]) - 1
        return index == 1 and position == 1  # end the second prompt after two tokens

    got = generate_from_ids(lm, encoded, max_new_tokens=6, on_token=on_token)
    assert got[0] == plain[0] and got[2] == plain[2]
    assert got[1].token_ids == plain[1].token_ids[:2] and got[1].finish_reason == "length"
    assert {i: tuple(t) for i, t in seen.items()} == {i: c.token_ids for i, c in enumerate(got)}
