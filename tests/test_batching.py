"""Shared-prefix batches: the common prefix computed once gives the same logits, tokens and activations."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.batching import MIN_SHARED_PREFIX, build_batch, common_prefix_length, record_batch, shared_prefix_length
from refusal_steer.generation import encode_prompts, generate, left_pad, position_ids
from refusal_steer.hooks import HookPoint, apply, run_and_record
from refusal_steer.interventions import Ablate, Add
from refusal_steer.scoring import next_token_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = "Explain how a computer works: a processor runs instructions."
PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea."]
N_NEW = 5


def _vector(lm, seed=1, scale=2.0):
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed)) * scale


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # keep=1 leaves the last token out
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]], keep=3) == 0
    assert common_prefix_length([[7, 1], [8, 1]]) == 0
    assert common_prefix_length([]) == 0


def test_prefix_is_shared_only_when_worth_it(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    encoded = encode_prompts(lm, PROMPTS, system=SYSTEM)
    length = shared_prefix_length(lm, encoded)
    assert length >= MIN_SHARED_PREFIX
    assert shared_prefix_length(lm, encoded[:1]) == 0, "a batch of one has nothing to share"
    assert shared_prefix_length(lm, encode_prompts(lm, PROMPTS)) == 0, "the bare template prefix is too short"
    assert shared_prefix_length(lm, encoded, max_prefix=3) == 0
    batch = build_batch(lm, encoded)
    assert batch.prefix_length == length and batch.past_key_values is not None
    assert batch.input_ids.shape[1] == max(len(t) for t in encoded) - length
    assert batch.total_width == max(len(t) for t in encoded)


def test_shared_logits_equal_plain_forward(tiny_lm):
    encoded = encode_prompts(tiny_lm, PROMPTS, system=SYSTEM)
    assert shared_prefix_length(tiny_lm, encoded) > 0
    plain = left_pad(encoded, tiny_lm.tokenizer.pad_token_id)
    plain["position_ids"] = position_ids(plain["attention_mask"])
    for interventions in ([], [Add(_vector(tiny_lm), "resid_pre.1")], [Ablate(_vector(tiny_lm), ["resid_pre.1", "mlp_out.0"])]):
        with apply(tiny_lm, interventions), torch.no_grad():
            reference = torch.log_softmax(tiny_lm.model(**plain, use_cache=False).logits[:, -1].float(), dim=-1)
        shared = next_token_logprobs(tiny_lm, PROMPTS, interventions, batch_size=3, system=SYSTEM)
        torch.testing.assert_close(shared, reference, atol=2e-5, rtol=1e-4)


# The shared prefix is 35 tokens here: (0, 3) lands in it, (38,) after it, (2, -1) in both.
@pytest.mark.parametrize("positions", ["all", "prompt", "generated", (-1,), (-2, -1), (0, 3), (38,), (2, -1)])
def test_shared_generation_equals_unshared(make_tiny_lm, positions):
    lm = make_tiny_lm("llama")
    steer = [Add(_vector(lm), "resid_pre.1", positions=positions)]
    kwargs = dict(max_new_tokens=N_NEW, batch_size=3, system=SYSTEM, progress=False)
    shared = generate(lm, PROMPTS, steer, **kwargs)
    unshared = generate(lm, PROMPTS, steer, share_prefix=False, **kwargs)
    one_by_one = generate(lm, PROMPTS, steer, **{**kwargs, "batch_size": 1})
    assert [c.token_ids for c in shared] == [c.token_ids for c in unshared] == [c.token_ids for c in one_by_one]
    if positions != "generated":  # a prompt-side steer must reach the tokens, or this test proves nothing
        assert [c.token_ids for c in shared] != [c.token_ids for c in generate(lm, PROMPTS, **kwargs)]


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "gemma2"])
def test_shared_generation_equals_unshared_across_families(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    for steer in ([], [Ablate(_vector(lm), ["resid_pre.0", "resid_pre.1", "resid_pre.2"])]):
        shared = generate(lm, PROMPTS, steer, max_new_tokens=N_NEW, batch_size=3, system=SYSTEM, progress=False)
        unshared = generate(lm, PROMPTS, steer, max_new_tokens=N_NEW, batch_size=3, system=SYSTEM, share_prefix=False, progress=False)
        assert [c.token_ids for c in shared] == [c.token_ids for c in unshared]


def test_index_reaching_into_prefix_disables_sharing(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    encoded = encode_prompts(lm, PROMPTS, system=SYSTEM)
    shortest_suffix = min(len(t) for t in encoded) - shared_prefix_length(lm, encoded)
    with apply(lm, [Add(_vector(lm), "resid_pre.1", positions=(-1,))]):
        assert shared_prefix_length(lm, encoded) > 0
    with apply(lm, [Add(_vector(lm), "resid_pre.1", positions=(-(shortest_suffix + 1),))]):
        assert shared_prefix_length(lm, encoded) == 0
    assert shared_prefix_length(lm, encoded) > 0, "removing the intervention lifts the restriction"


def test_sliding_window_shorter_than_sequence_disables_sharing(make_tiny_lm):
    lm = make_tiny_lm("gemma2")  # window 64
    encoded = encode_prompts(lm, PROMPTS, system=SYSTEM)
    assert shared_prefix_length(lm, encoded) > 0
    assert shared_prefix_length(lm, encoded, extra_tokens=64) == 0


def test_record_batch_matches_plain_recording(tiny_lm):
    encoded = encode_prompts(tiny_lm, PROMPTS, system=SYSTEM)
    points = [HookPoint.parse("resid_pre.1"), HookPoint.parse("mlp_out.1")]
    plain = left_pad(encoded, tiny_lm.tokenizer.pad_token_id)
    plain["position_ids"] = position_ids(plain["attention_mask"])
    steer = [Add(_vector(tiny_lm), "resid_pre.0")]
    reference = run_and_record(tiny_lm, plain, points, extra=steer)
    shared = record_batch(tiny_lm, encoded, points, steer, keep=3)
    for point in points:
        torch.testing.assert_close(shared[point][:, -3:], reference[point][:, -3:], atol=2e-5, rtol=1e-4)
