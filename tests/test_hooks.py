"""The hook engine: typed points, exact identity, cleanup on error, position masks, early stop."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from refusal_steer.batching import cache_kwarg
from refusal_steer.errors import HookPointError
from refusal_steer.hooks import HookCall, HookPoint, Recorder, Site, apply, prompt_boundary, record, run_and_record
from refusal_steer.models import format_chat


def _batch(lm, prompts=("How do I bake bread?", "Hi")):
    lm.tokenizer.padding_side = "left"
    texts = [format_chat(lm.tokenizer, p) for p in prompts]
    return lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@dataclass
class Identity:
    points: tuple[HookPoint, ...]

    def validate(self, lm) -> None:
        pass

    def __call__(self, x, call):
        return x


@dataclass
class AddOne:
    points: tuple[HookPoint, ...]

    def validate(self, lm) -> None:
        pass

    def __call__(self, x, call):
        return x + 1.0


@dataclass
class Boom:
    points: tuple[HookPoint, ...]

    def validate(self, lm) -> None:
        pass

    def __call__(self, x, call):
        raise RuntimeError("boom")


def _all_points(lm):
    points = []
    for layer in range(lm.n_layers):
        points += [HookPoint(site, layer) for site in Site if site is not Site.HEAD_OUT]
        points += [HookPoint(Site.HEAD_OUT, layer, head) for head in range(lm.n_heads)]
    return tuple(points)


@pytest.mark.parametrize("text, expected", [
    ("resid_pre.12", HookPoint(Site.RESID_PRE, 12)),
    ("mlp_out.0", HookPoint(Site.MLP_OUT, 0)),
    (" head_out.3.7 ", HookPoint(Site.HEAD_OUT, 3, 7)),
])
def test_HookPoint_parse_round_trips(text, expected):
    point = HookPoint.parse(text)
    assert point == expected
    assert HookPoint.parse(str(point)) == point


@pytest.mark.parametrize("text", ["resid.3", "resid_pre", "head_out.3", "resid_pre.3.1", "resid_pre.x"])
def test_HookPoint_parse_rejects_bad_strings(text):
    with pytest.raises(HookPointError) as info:
        HookPoint.parse(text)
    assert info.value.fix


def test_identity_intervention_is_bit_identical(tiny_lm):
    batch = _batch(tiny_lm)
    with torch.no_grad():
        reference = tiny_lm.model(**batch).logits
        with apply(tiny_lm, [Identity(_all_points(tiny_lm))]):
            steered = tiny_lm.model(**batch).logits
    assert torch.equal(reference, steered)


def test_hooks_change_output_and_are_removed(tiny_lm):
    batch = _batch(tiny_lm)
    with torch.no_grad():
        reference = tiny_lm.model(**batch).logits
        with apply(tiny_lm, [AddOne((HookPoint(Site.RESID_PRE, 1),))]):
            steered = tiny_lm.model(**batch).logits
        after = tiny_lm.model(**batch).logits
    assert not torch.allclose(reference, steered)
    assert torch.equal(reference, after)


def test_hooks_removed_after_exception(tiny_lm):
    batch = _batch(tiny_lm)
    with torch.no_grad():
        reference = tiny_lm.model(**batch).logits
        with pytest.raises(RuntimeError, match="boom"):
            with apply(tiny_lm, [Boom((HookPoint(Site.MLP_OUT, 0),))]):
                tiny_lm.model(**batch)
        assert torch.equal(reference, tiny_lm.model(**batch).logits)
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_lm.model.modules())
    assert n_hooks == 0


def test_out_of_range_layer_fails_before_any_hook(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    with pytest.raises(HookPointError, match="out of range"):
        with apply(lm, [Identity((HookPoint(Site.RESID_PRE, 0), HookPoint(Site.RESID_PRE, 99)))]):
            pass
    with pytest.raises(HookPointError, match="head 9"):
        with apply(lm, [Identity((HookPoint(Site.HEAD_OUT, 0, 9),))]):
            pass
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules()) == 0


def test_adapter_points_have_the_right_shapes(tiny_lm):
    batch = _batch(tiny_lm)
    points = [HookPoint(s, 1) for s in (Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT)]
    points.append(HookPoint(Site.HEAD_OUT, 1, 2))
    with record(tiny_lm, points) as rec, torch.no_grad():
        tiny_lm.model(**batch)
    b, s = batch["input_ids"].shape
    for point in points[:4]:
        assert rec[point].shape == (b, s, tiny_lm.d_model), point
    assert rec[points[4]].shape == (b, s, tiny_lm.head_dim)


def test_residual_decomposition_holds(tiny_lm):
    """resid_post = resid_pre + attn_out + mlp_out: the sites are where the residual is written."""
    batch = _batch(tiny_lm)
    points = [HookPoint(s, 1) for s in (Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT)]
    with record(tiny_lm, points) as rec, torch.no_grad():
        tiny_lm.model(**batch)
    pre, post, attn, mlp = (rec[p] for p in points)
    torch.testing.assert_close(post, pre + attn + mlp, atol=1e-4, rtol=1e-4)


def test_head_out_edit_equals_editing_o_proj_input(make_tiny_lm):
    lm = make_tiny_lm("llama")
    batch = _batch(lm)
    o_proj = lm.block_module(1, lm.adapter.attn_o_proj)
    seen = {}
    with torch.no_grad(), apply(lm, [AddOne((HookPoint(Site.HEAD_OUT, 1, 2),))]):
        # Registered after the engine's hook, so it sees the edited input of o_proj.
        handle = o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach().clone()))
        lm.model(**batch)
    handle.remove()
    with torch.no_grad(), record(lm, [HookPoint(Site.HEAD_OUT, 1, h) for h in range(lm.n_heads)]) as rec:
        lm.model(**batch)
    heads = seen["x"].view(*seen["x"].shape[:-1], lm.n_heads, lm.head_dim)
    for h in range(lm.n_heads):
        expected = rec[HookPoint(Site.HEAD_OUT, 1, h)] + (1.0 if h == 2 else 0.0)
        torch.testing.assert_close(heads[..., h, :], expected)


@dataclass
class PositionSpy:
    points: tuple[HookPoint, ...]
    calls: list

    def validate(self, lm) -> None:
        pass

    def __call__(self, x, call: HookCall):
        self.calls.append(call.positions)
        return x


def test_positions_mark_padding_prompt_and_generated(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    batch = _batch(lm)
    spy = PositionSpy((HookPoint(Site.RESID_PRE, 0),), [])
    prompt_len = batch["input_ids"].shape[1]
    with torch.no_grad(), apply(lm, [spy]), prompt_boundary(lm, prompt_len):
        out = lm.model(**batch, use_cache=True)
        next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(next_ids)], dim=1)
        key = cache_kwarg(lm.model)
        lm.model(input_ids=next_ids, attention_mask=mask, use_cache=True, **{key: getattr(out, key)})
    first, second = spy.calls
    assert torch.equal(first.padding, batch["attention_mask"].eq(0))
    assert torch.equal(first.prompt, batch["attention_mask"].eq(1))
    assert not first.generated.any()
    assert second.offset == prompt_len
    assert second.generated.all() and not second.prompt.any() and not second.padding.any()


def test_run_and_record_stops_after_last_layer(make_tiny_lm):
    lm = make_tiny_lm("qwen2", n_layers=3)
    batch = _batch(lm)
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(lm.layers)]
    acts = run_and_record(lm, dict(batch), ["resid_post.0"])
    for h in handles:
        h.remove()
    assert ran == [0]
    assert acts[HookPoint(Site.RESID_POST, 0)].shape[-1] == lm.d_model


def test_recorder_requires_points():
    with pytest.raises(HookPointError):
        Recorder(()).validate(None)
