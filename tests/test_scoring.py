"""Scoring against hand computations: one full forward pass per item, no padding, no batching."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError
from refusal_steer.generation import encode_prompts
from refusal_steer.interventions import Add
from refusal_steer.scoring import choice_logliks, continuation_loglik, cross_entropy, kl_divergence, next_token_logprobs

PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea."]


pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_logprobs(lm, tokens):
    with torch.no_grad():
        return torch.log_softmax(lm.model(torch.tensor([tokens])).logits[0].float(), -1)


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "gpt2"])
def test_next_token_logprobs_match_unbatched_forward(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    encoded = encode_prompts(lm, PROMPTS)
    last = next_token_logprobs(lm, PROMPTS, batch_size=2)
    several = next_token_logprobs(lm, PROMPTS, positions=[0, -1, -3], batch_size=3)
    assert last.shape == (3, lm.vocab_size) and several.shape == (3, 3, lm.vocab_size)
    for i, tokens in enumerate(encoded):
        hand = _hand_logprobs(lm, tokens)
        torch.testing.assert_close(last[i], hand[-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(several[i], hand[[0, -1, -3]], atol=1e-4, rtol=1e-4)


def test_continuation_loglik_matches_hand_sum(make_tiny_lm):
    lm = make_tiny_lm("llama")
    continuations = [" Mix flour and water.", "Hello", " The waves roll in."]
    got = continuation_loglik(lm, PROMPTS, continuations, batch_size=3)
    for i, (context, continuation) in enumerate(zip(encode_prompts(lm, PROMPTS), continuations)):
        target = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        hand = _hand_logprobs(lm, context + target)
        expected = sum(hand[len(context) - 1 + j, t] for j, t in enumerate(target))
        torch.testing.assert_close(got[i], expected, atol=1e-4, rtol=1e-4)
    mean = continuation_loglik(lm, PROMPTS, continuations, reduction="mean")
    lengths = torch.tensor([len(lm.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations])
    torch.testing.assert_close(mean, got / lengths)


def test_choice_logliks_rank_choices(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    scores = choice_logliks(lm, "Pick one.", ["A", "B", "C", "D"])
    singles = torch.stack([continuation_loglik(lm, ["Pick one."], [c])[0] for c in "ABCD"])
    torch.testing.assert_close(scores, singles, atol=1e-5, rtol=1e-5)


def test_kl_divergence_zero_without_steer_and_matches_hand(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    assert kl_divergence(lm, PROMPTS, []).per_prompt.abs().max() < 1e-5
    steer = [Add(torch.randn(lm.d_model) * 3, "resid_pre.1")]
    result = kl_divergence(lm, PROMPTS, steer, batch_size=2)
    base = next_token_logprobs(lm, PROMPTS)
    steered = next_token_logprobs(lm, PROMPTS, steer)
    hand = torch.nn.functional.kl_div(steered, base, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(result.per_prompt, hand, atol=1e-5, rtol=1e-4)
    # In batches of 2 vs one batch: the mean agrees as well as the per-prompt values above (float32 rounding), no better.
    assert result.n == 3 and result.mean == pytest.approx(float(hand.mean()), rel=1e-4, abs=1e-5)
    assert result.mean > 0


def test_cross_entropy_raw_text_and_chat_pairs(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    text = "The quick brown fox jumps over the lazy dog."
    tokens = lm.tokenizer(text)["input_ids"]
    hand = _hand_logprobs(lm, tokens)
    expected = -torch.stack([hand[j, t] for j, t in enumerate(tokens[1:])]).mean()
    pair = ("How do I bake bread?", " Knead and bake.")
    result = cross_entropy(lm, [text, pair])
    torch.testing.assert_close(result.per_item[0], expected, atol=1e-4, rtol=1e-4)
    pair_ll = continuation_loglik(lm, [pair[0]], [pair[1]], reduction="mean")[0]
    torch.testing.assert_close(result.per_item[1], -pair_ll, atol=1e-5, rtol=1e-5)
    n_pair = len(lm.tokenizer(pair[1], add_special_tokens=False)["input_ids"])
    assert result.n_tokens == len(tokens) - 1 + n_pair
    with pytest.raises(ConfigError):
        continuation_loglik(lm, PROMPTS, ["a"])


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_token_logprobs_match_unbatched_forward_and_steer_positions(make_tiny_lm, family):
    from refusal_steer.generation import generate_from_ids
    from refusal_steer.hooks import HookPoint
    from refusal_steer.scoring import token_logprobs

    lm = make_tiny_lm(family)
    prompts = [list(lm.tokenizer(t)["input_ids"]) for t in ["The quick brown fox", "Hi there", "A"]]
    continuations = [[5, 6, 7], [], [9]]
    got = token_logprobs(lm, prompts, continuations, top_k=3, batch_size=2)
    for item, prompt, cont in zip(got, prompts, continuations):
        tokens = prompt + cont
        hand = _hand_logprobs(lm, tokens)
        assert item.token_ids == tuple(tokens) and len(item.logprobs) == len(tokens) - 1 == len(item.top)
        expected = hand[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]
        torch.testing.assert_close(torch.tensor(item.logprobs), expected, atol=1e-4, rtol=1e-4)
        for position, top in enumerate(item.top):
            assert [t for t, _ in top] == hand[position].topk(3).indices.tolist()
    # Continuation tokens are scored as generated tokens: a steer on generated positions changes only them,
    # and greedy generation's own tokens are each the argmax of their scored position.
    steer = [Add(vector=torch.randn(lm.d_model) * 4, point=HookPoint.parse("resid_pre.1"), positions="generated")]
    generated = generate_from_ids(lm, prompts[:1], steer, max_new_tokens=4)[0].token_ids
    scored = token_logprobs(lm, prompts[:1], [list(generated)], steer, top_k=1)[0]
    n = len(prompts[0])
    assert [top[0][0] for top in scored.top[n - 1:]] == list(generated)
    plain = token_logprobs(lm, prompts[:1], [list(generated)], top_k=1)[0]
    assert scored.logprobs[: n - 1] == pytest.approx(plain.logprobs[: n - 1], abs=1e-5)
    assert scored.logprobs[n:] != pytest.approx(plain.logprobs[n:], abs=1e-3)
