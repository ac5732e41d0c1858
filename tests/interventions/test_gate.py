"""Gates and SAE steers under batching: per-row state from prefill through decoding, and shared == unshared == one by one."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.generation import generate
from refusal_steer.hooks import apply
from refusal_steer.interventions import Add, Gate, gate_decisions
from refusal_steer.sae import SaeSplice, TopKConfig, build_sae
from refusal_steer.scoring import next_token_logprobs
from tests.conftest import FAMILIES  # every supported family

SYSTEM = "Explain how a computer works: a processor runs instructions."
PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea.", "What is two plus two?"]


def _v(lm, seed, scale=1.0):
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed)) * scale


def _row_cosines(lm, direction, point):
    """Each prompt's cosine at its last prompt token, computed one prompt at a time (the gate's reference)."""
    from refusal_steer.generation import encode_prompts
    from refusal_steer.hooks import run_and_record

    out = []
    for tokens in encode_prompts(lm, PROMPTS, system=SYSTEM):
        (acts,) = run_and_record(lm, {"input_ids": torch.tensor([tokens])}, [point]).values()
        last = acts[0, -1]
        out.append(float(last @ (direction / direction.norm()) / last.norm()))
    return out


def test_gate_fires_per_row_and_holds_through_decoding(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    direction = _v(lm, 1)
    cosines = _row_cosines(lm, direction, "resid_pre.1")
    threshold = sorted(cosines)[len(cosines) // 2 - 1] + 1e-6  # half the prompts fire
    push = Add(_v(lm, 2, 30.0), "resid_pre.2")
    gate = Gate(direction, "resid_pre.1", threshold=threshold, interventions=[push])
    kwargs = dict(max_new_tokens=5, batch_size=4, system=SYSTEM, progress=False)
    gated = [c.token_ids for c in generate(lm, PROMPTS, [gate], **kwargs)]
    plain = [c.token_ids for c in generate(lm, PROMPTS, **kwargs)]
    always = [c.token_ids for c in generate(lm, PROMPTS, [push], **kwargs)]
    fires = [c > threshold for c in cosines]
    assert any(fires) and not all(fires)
    for row, fired in enumerate(fires):  # each row is exactly the steered or the unsteered answer, every step
        assert gated[row] == (always[row] if fired else plain[row])
    assert gated != plain and gated != always
    # the same with the prefix unshared, one by one, and without the KV cache (each step re-decides on the same prompt)
    assert [c.token_ids for c in generate(lm, PROMPTS, [gate], share_prefix=False, **kwargs)] == gated
    assert [c.token_ids for c in generate(lm, PROMPTS, [gate], **{**kwargs, "batch_size": 1})] == gated
    assert [c.token_ids for c in generate(lm, PROMPTS, [gate], use_cache=False, **kwargs)] == gated


def test_gate_memory_is_reset_between_batches_and_calls(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    direction = _v(lm, 1)
    gate = Gate(direction, "resid_pre.1", threshold=-1.0, above=True, interventions=[Add(_v(lm, 2), "resid_pre.2")])
    seen = []

    class Spy:
        kind, positions, points = "spy", "all", (gate.point,)

        def validate(self, lm):
            pass

        def __call__(self, x, call):
            seen.append(call.memory.get("mark"))
            call.memory["mark"] = True
            return x

    generate(lm, PROMPTS, [gate, Spy()], max_new_tokens=2, batch_size=2, system=SYSTEM, progress=False)
    # each batch starts a new sequence: the first call of every batch sees an empty memory
    assert seen.count(None) == 2 and len(seen) > 2
    with apply(lm, [gate]) as handle:
        lm.model(**lm.tokenizer(["hello there"], return_tensors="pt"))
        assert gate_decisions(lm._hook_state.memory[id(gate)]).tolist() == [True]
    assert handle.removed and id(gate) not in lm._hook_state.memory


@pytest.mark.parametrize("family", FAMILIES)
def test_sae_steer_in_shared_prefix_generation_equals_one_by_one(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    torch.manual_seed(0)
    sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=64, k=8, point="resid_pre.1"))
    with torch.no_grad():
        sae.W_dec.mul_(4.0)  # a reconstruction far from x, so an unspliced token shows
    steers = {
        "splice": [SaeSplice(sae, "resid_pre.1", keep_error=False, skip_tokens=12)],
        "gated splice": [Gate(_v(lm, 3), "resid_pre.0", threshold=-1.0, interventions=[SaeSplice(sae, "resid_pre.1", keep_error=False, skip_tokens=12)])],
    }
    kwargs = dict(max_new_tokens=4, system=SYSTEM, progress=False)
    for name, steer in steers.items():
        shared = generate(lm, PROMPTS, steer, batch_size=4, **kwargs)
        one_by_one = generate(lm, PROMPTS, steer, batch_size=1, share_prefix=False, **kwargs)
        assert [c.token_ids for c in shared] == [c.token_ids for c in one_by_one], name
        lp_shared = next_token_logprobs(lm, PROMPTS, steer, batch_size=4, system=SYSTEM)
        lp_single = torch.cat([next_token_logprobs(lm, [p], steer, batch_size=1, system=SYSTEM) for p in PROMPTS])
        torch.testing.assert_close(lp_shared, lp_single, atol=1e-4, rtol=1e-4)
    plain = generate(lm, PROMPTS, batch_size=4, **kwargs)
    assert [c.token_ids for c in plain] != [c.token_ids for c in generate(lm, PROMPTS, steers["splice"], batch_size=4, **kwargs)]
