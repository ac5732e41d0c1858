"""Gates under batching: decided per row at prefill on the full prompt, held through decoding, reset between batches;
a gated batch (plain, shared-prefix, without the KV cache) equals each prompt run alone, and a row that does not fire
equals the unsteered model exactly."""

from __future__ import annotations

import math

import pytest
import torch

from refusal_steer.batching import shared_prefix_length
from refusal_steer.errors import ConfigError
from refusal_steer.generation import encode_prompts, generate, length_order
from refusal_steer.hooks import apply, run_and_record
from refusal_steer.interventions import Ablate, Add, Cosine, Gate, Probe, Projection, gate_decisions
from refusal_steer.sae import SaeLatent, SaeSplice, TopKConfig, build_sae
from refusal_steer.scoring import next_token_logprobs
from tests.conftest import FAMILIES  # every supported family

SYSTEM = "Explain how a computer works: a processor runs instructions."
PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea.", "What is two plus two?"]
READ = "resid_pre.1"


def _v(lm, seed, scale=1.0):
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed)) * scale


def _activations(lm, point=READ):
    """Each prompt's activations ``(seq, d)`` at ``point``, one prompt at a time on the unsteered model (the reference)."""
    out = []
    for tokens in encode_prompts(lm, PROMPTS, system=SYSTEM):
        (acts,) = run_and_record(lm, {"input_ids": torch.tensor([tokens])}, [point]).values()
        out.append(acts[0])
    return out


def _token_scores(lm, condition, point=READ):
    """Each prompt's per-token condition scores, computed one prompt at a time (the reference)."""
    return [condition.score(acts).double() for acts in _activations(lm, point)]


def _between(values):
    """A threshold halfway between the two middle values: half the prompts fire, far from rounding."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2


def _steer(lm):
    # One child after the read point (it reaches the last prompt token too), one before and at it (answer tokens only).
    return [Add(_v(lm, 2, 30.0), "resid_pre.2"), Ablate(_v(lm, 4), ["resid_pre.0", READ, "mlp_out.2"])]


def _tokens(completions):
    return [c.token_ids for c in completions]


@pytest.mark.parametrize("family", FAMILIES)
def test_gated_batch_equals_each_prompt_alone(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    condition = Projection(_v(lm, 1))
    scores = [float(s[-1]) for s in _token_scores(lm, condition)]
    gate = Gate(condition, READ, threshold=_between(scores), steer=_steer(lm))
    fires = [s > gate.threshold for s in scores]
    kwargs = dict(max_new_tokens=5, system=SYSTEM, progress=False)
    encoded = encode_prompts(lm, PROMPTS, system=SYSTEM)
    with apply(lm, [gate]):
        assert shared_prefix_length(lm, encoded) > 0, "a gate must not switch prefix sharing off"

    shared = _tokens(generate(lm, PROMPTS, [gate], batch_size=4, **kwargs))
    order = length_order([len(t) for t in encoded])
    assert gate.last_fired.tolist() == [fires[i] for i in order]  # rows in the batch's (length) order
    unshared = _tokens(generate(lm, PROMPTS, [gate], batch_size=4, share_prefix=False, **kwargs))
    one_by_one = _tokens(generate(lm, PROMPTS, [gate], batch_size=1, **kwargs))
    assert shared == unshared == one_by_one

    plain = _tokens(generate(lm, PROMPTS, batch_size=4, **kwargs))
    always = _tokens(generate(lm, PROMPTS, _steer(lm), batch_size=4, **kwargs))
    for row, fired in enumerate(fires):
        if not fired:
            assert shared[row] == plain[row]
    assert any(shared[row] != plain[row] for row, fired in enumerate(fires) if fired), "the steer changed nothing: the test proves nothing"
    assert shared != always

    lp_shared = next_token_logprobs(lm, PROMPTS, [gate], batch_size=4, system=SYSTEM)
    lp_unshared = torch.cat([next_token_logprobs(lm, [p], [gate], batch_size=1, system=SYSTEM) for p in PROMPTS])
    torch.testing.assert_close(lp_shared, lp_unshared, atol=1e-4, rtol=1e-4)
    lp_plain = next_token_logprobs(lm, PROMPTS, [], batch_size=4, system=SYSTEM)
    for row, fired in enumerate(fires):  # the same batch layout: a row that does not fire is the unsteered row, bit for bit
        assert torch.equal(lp_shared[row], lp_plain[row]) != fired


@pytest.mark.parametrize("reduce,skip", [("max", 3), ("mean", 3), ("mean", 0), ("last", 0)])
def test_reduce_covers_the_full_prompt_under_a_shared_prefix(make_tiny_lm, reduce, skip):
    lm = make_tiny_lm("llama")
    condition = Cosine(_v(lm, 5))
    per_token = _token_scores(lm, condition)
    aggregate = {"max": lambda s: float(s[skip:].max()), "mean": lambda s: float(s[skip:].mean()), "last": lambda s: float(s[-1])}[reduce]
    scores = [aggregate(s) for s in per_token]
    gate = Gate(condition, READ, threshold=_between(scores), steer=_steer(lm), reduce=reduce, skip_tokens=skip)
    kwargs = dict(max_new_tokens=4, system=SYSTEM, progress=False)
    shared = _tokens(generate(lm, PROMPTS, [gate], batch_size=4, **kwargs))
    order = length_order([len(t) for t in encode_prompts(lm, PROMPTS, system=SYSTEM)])
    assert gate.last_fired.tolist() == [scores[i] > gate.threshold for i in order]
    torch.testing.assert_close(gate.last_scores.double(), torch.tensor([scores[i] for i in order], dtype=torch.float64), atol=1e-5, rtol=1e-4)
    assert shared == _tokens(generate(lm, PROMPTS, [gate], batch_size=1, **kwargs))


def test_invert_fires_the_complement_and_an_empty_read_set_never_fires(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    condition = Probe(_v(lm, 6, 10.0), bias=0.25)
    scores = [float(s[-1]) for s in _token_scores(lm, condition)]
    threshold = _between(scores)
    kwargs = dict(max_new_tokens=2, system=SYSTEM, progress=False, batch_size=4)
    fired = {}
    for invert in (False, True):
        gate = Gate(condition, READ, threshold=threshold, steer=_steer(lm), invert=invert)
        generate(lm, PROMPTS, [gate], **kwargs)
        fired[invert] = gate.last_fired
    assert torch.equal(fired[True], ~fired[False]) and bool(fired[False].any()) and bool(fired[True].any())
    plain = _tokens(generate(lm, PROMPTS, **kwargs))
    for invert in (False, True):
        nothing = Gate(condition, READ, threshold=threshold, steer=_steer(lm), invert=invert, reduce="mean", skip_tokens=10_000)
        assert _tokens(generate(lm, PROMPTS, [nothing], **kwargs)) == plain
        assert not bool(nothing.last_fired.any()) and bool(nothing.last_scores.isnan().all())


def test_decision_holds_without_the_kv_cache_and_is_counted_once(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    condition = Projection(_v(lm, 1))
    scores = [float(s[-1]) for s in _token_scores(lm, condition)]
    # a strong child before the read point: it may steer the answer tokens, never the last prompt token
    gate = Gate(condition, READ, threshold=_between(scores), steer=[Add(_v(lm, 8, 30.0), "resid_pre.0"), *_steer(lm)])
    kwargs = dict(max_new_tokens=5, system=SYSTEM, progress=False, batch_size=2)
    cached = _tokens(generate(lm, PROMPTS, [gate], **kwargs))
    assert gate.counts == (2, 4) and gate.firing_rate == 0.5
    assert cached != _tokens(generate(lm, PROMPTS, [Gate(condition, READ, threshold=gate.threshold, steer=_steer(lm))], **kwargs))
    # every step re-runs the prompt from position 0: the children before the read point still steer the answer
    assert _tokens(generate(lm, PROMPTS, [gate], use_cache=False, **kwargs)) == cached
    assert gate.counts == (4, 8)
    gate.reset_counts()
    assert gate.counts == (0, 0) and math.isnan(gate.firing_rate) and gate.last_fired is None


def test_gate_memory_is_reset_between_batches_and_calls(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    gate = Gate(Cosine(_v(lm, 1)), READ, threshold=-1.0, steer=[Add(_v(lm, 2), "resid_pre.2")])
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


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "gemma2"])
def test_sae_latent_gate_and_gated_splice_in_shared_prefix_equal_one_by_one(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    torch.manual_seed(0)
    sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=64, k=8, point=READ))
    with torch.no_grad():
        sae.W_dec.mul_(4.0)  # a reconstruction far from x, so an unspliced token shows
    with torch.no_grad():  # the latent whose prompt maxima (after the skipped template tokens) differ most across prompts
        maxima = torch.stack([torch.as_tensor(sae.encode(acts.float()))[12:].amax(dim=0) for acts in _activations(lm)])
    latent = int(maxima.std(dim=0).argmax())
    scores = maxima[:, latent].tolist()
    assert len(set(scores)) > 1
    splice = SaeSplice(sae, READ, keep_error=False, skip_tokens=12)
    steers = {
        "splice": [splice],
        "gated splice": [Gate(Cosine(_v(lm, 3)), "resid_pre.0", threshold=-1.0, steer=[splice])],
        "latent gate": [Gate(SaeLatent(sae, latent=latent), READ, threshold=_between(scores),
                             reduce="max", skip_tokens=12, steer=[Add(_v(lm, 2, 30.0), "resid_pre.2")])],
    }
    kwargs = dict(max_new_tokens=4, system=SYSTEM, progress=False)
    for name, steer in steers.items():
        shared = generate(lm, PROMPTS, steer, batch_size=4, **kwargs)
        one_by_one = generate(lm, PROMPTS, steer, batch_size=1, share_prefix=False, **kwargs)
        assert _tokens(shared) == _tokens(one_by_one), name
        lp_shared = next_token_logprobs(lm, PROMPTS, steer, batch_size=4, system=SYSTEM)
        lp_single = torch.cat([next_token_logprobs(lm, [p], steer, batch_size=1, system=SYSTEM) for p in PROMPTS])
        torch.testing.assert_close(lp_shared, lp_single, atol=1e-4, rtol=1e-4)
    plain = generate(lm, PROMPTS, batch_size=4, **kwargs)
    assert _tokens(plain) != _tokens(generate(lm, PROMPTS, steers["splice"], batch_size=4, **kwargs))
    assert _tokens(plain) != _tokens(generate(lm, PROMPTS, steers["latent gate"], batch_size=4, **kwargs))


def test_nested_gates_decide_independently(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    outer_condition, inner_condition = Projection(_v(lm, 1)), Projection(_v(lm, 7))
    outer_scores = [float(s[-1]) for s in _token_scores(lm, outer_condition)]
    inner_scores = [float(s[-1]) for s in _token_scores(lm, inner_condition, "resid_pre.0")]
    inner = Gate(inner_condition, "resid_pre.0", threshold=_between(inner_scores), steer=[Add(_v(lm, 2, 30.0), "resid_pre.2")])
    outer = Gate(outer_condition, READ, threshold=_between(outer_scores), steer=[inner])
    kwargs = dict(max_new_tokens=4, system=SYSTEM, progress=False)
    both = _tokens(generate(lm, PROMPTS, [outer], batch_size=4, **kwargs))
    assert both == _tokens(generate(lm, PROMPTS, [outer], batch_size=1, **kwargs))
    plain = _tokens(generate(lm, PROMPTS, batch_size=4, **kwargs))
    for row in range(len(PROMPTS)):
        if not (outer_scores[row] > outer.threshold and inner_scores[row] > inner.threshold):
            assert both[row] == plain[row]


def test_constructor_errors_name_the_field(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    add = Add(_v(lm, 2), "resid_pre.2")
    with pytest.raises(ConfigError, match=r"gate.threshold is a cosine score and must lie in \[-1, 1\]"):
        Gate(Cosine(_v(lm, 1)), READ, threshold=1.5, steer=[add])
    with pytest.raises(ConfigError, match="gate.threshold must be a finite number"):
        Gate(Projection(_v(lm, 1)), READ, threshold=float("nan"), steer=[add])
    with pytest.raises(ConfigError, match="gate.steer is empty"):
        Gate(Projection(_v(lm, 1)), READ, threshold=0.0, steer=[])
    with pytest.raises(ConfigError, match="gate.reduce must be one of last, max, mean"):
        Gate(Projection(_v(lm, 1)), READ, threshold=0.0, steer=[add], reduce="median")
    with pytest.raises(ConfigError, match="gate.condition must be a condition"):
        Gate(_v(lm, 1), READ, threshold=0.0, steer=[add])


def test_the_documented_gate_steer_file_loads_and_runs(make_tiny_lm, tmp_path):
    from pathlib import Path

    from safetensors.torch import save_file

    from refusal_steer.interventions import fingerprint, load_steer_file, save_steer_file

    text = (Path(__file__).parents[2] / "docs" / "steers.md").read_text()
    section = text[text.index("## Gates"):]
    example = section[section.index("```yaml") + len("```yaml"):section.index("```", section.index("```yaml") + 7)]
    lm = make_tiny_lm("qwen2", n_layers=13)  # the example reads at layer 8 and steers at layer 12
    save_file({"t0": _v(lm, 1), "t1": _v(lm, 2)}, str(tmp_path / "gate.safetensors"))
    (tmp_path / "gate.yaml").write_text(example)
    (gate,) = load_steer_file(tmp_path / "gate.yaml", lm)
    assert isinstance(gate, Gate) and isinstance(gate.condition, Projection)
    assert (gate.reduce, gate.skip_tokens, gate.threshold, gate.invert) == ("max", 24, 2.5, False) and isinstance(gate.steer[0], Add)
    generate(lm, PROMPTS[:2], [gate], max_new_tokens=2, system=SYSTEM, progress=False)
    assert gate.counts[1] == 2
    assert fingerprint(load_steer_file(save_steer_file(tmp_path / "again.json", [gate]), lm)) == fingerprint([gate])


def test_completions_say_which_rows_fired(make_tiny_lm):
    """``Completion.gates_fired`` follows each prompt through length ordering and several batches."""
    lm = make_tiny_lm("qwen2")
    condition = Projection(_v(lm, 1))
    scores = [float(s[-1]) for s in _token_scores(lm, condition)]
    gate = Gate(condition, READ, threshold=_between(scores), steer=_steer(lm))
    batched = generate(lm, PROMPTS, [gate], system=SYSTEM, max_new_tokens=3, batch_size=3, progress=False)
    alone = [generate(lm, [p], [gate], system=SYSTEM, max_new_tokens=3, progress=False)[0] for p in PROMPTS]
    assert [c.gates_fired for c in batched] == [c.gates_fired for c in alone] == [(s > gate.threshold,) for s in scores]
    assert "gates_fired" in batched[0].to_dict() and "gates_fired" not in generate(lm, PROMPTS[:1], max_new_tokens=2, progress=False)[0].to_dict()
