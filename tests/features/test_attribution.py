"""Attribution patching with integrated gradients, checked against gradients computed by hand."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.batching import build_batch, common_prefix_length, forward, logits_to_keep
from refusal_steer.directions.screening import frozen_parameters
from refusal_steer.errors import ConfigError
from refusal_steer.features.attribution import attribute, attribute_batch
from refusal_steer.features.scores import prompt_mask
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import HookPoint, apply, residual_writes
from refusal_steer.interventions import Ablate
from refusal_steer.sae import JumpReluConfig, TopKConfig, build_sae

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["How do I bake bread?", "Hi there", "Write a poem about the sea."]


def _setup(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    torch.manual_seed(1)
    sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=48, k=6, point="resid_pre.1"))
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(2))
    return lm, sae, direction


class _Grad:
    """Makes the activation at one point a leaf with a gradient (the hand-made reference)."""

    kind, positions = "grad", "all"

    def __init__(self, point):
        self.points = (point,)
        self.x = None

    def validate(self, lm):
        pass

    def __call__(self, x, call):
        self.x = x.detach().requires_grad_(True)
        return self.x


def test_one_step_attribution_is_latent_delta_times_the_gradient_through_the_decoder(make_tiny_lm):
    lm, sae, direction = _setup(make_tiny_lm)
    point = HookPoint.parse("resid_pre.1")
    tokens = encode_prompts(lm, PROMPTS)
    refusal = [5, 9]
    out = attribute_batch(lm, {"s": sae}, {"s": point}, tokens, direction, refusal, steps=1, skip_tokens=2)
    # by hand: f_clean, f_patch (direction ablated everywhere), target = patched argmax, grad of m at the clean activation
    batch = build_batch(lm, tokens, share_prefix=False)
    keep = logits_to_keep(lm.model, 1)
    grab = _Grad(point)
    with apply(lm, [grab]):
        logits = forward(lm, batch, **keep).logits[:, -1].float()
    x_clean = grab.x
    grab_p = _Grad(point)
    with torch.no_grad(), apply(lm, [Ablate(direction, residual_writes(lm)), grab_p]):
        patched = forward(lm, batch, **keep).logits[:, -1].float()
    target = patched.argmax(-1)
    m = logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits[:, refusal], -1)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    m.sum().backward()
    grad_f = x_clean.grad @ (sae.W_dec.detach() / sae.norm_scale).T  # d m / d f = W_dec d m / d x
    delta = sae.encode(grab_p.x.detach()) - sae.encode(x_clean.detach())
    mask = prompt_mask(batch.attention_mask, 2).unsqueeze(-1).float()
    expected = (delta * grad_f * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(out["s"], expected, atol=1e-5, rtol=1e-4)
    assert out["s"].abs().sum() > 0
    assert out["_metric"].shape == (3, 2)


def test_more_steps_change_the_attribution_and_batches_resume(tmp_path, make_tiny_lm):
    lm, sae, direction = _setup(make_tiny_lm)
    points = {"s": HookPoint.parse("resid_pre.1")}
    one = attribute(lm, {"s": sae}, points, PROMPTS, direction, [5], steps=1, batch_size=2, progress=False)
    ten = attribute(lm, {"s": sae}, points, PROMPTS, direction, [5], steps=10, batch_size=2, progress=False, partial_dir=tmp_path)
    assert one["s"].shape == ten["s"].shape == (3, 48)
    assert not torch.allclose(one["s"], ten["s"])
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    again = attribute(lm, {"s": sae}, points, PROMPTS, direction, [5], steps=10, batch_size=2, progress=False, partial_dir=tmp_path)
    assert torch.equal(again["s"], ten["s"])
    # batch composition does not change a prompt's scores (left padding is masked)
    single = attribute(lm, {"s": sae}, points, PROMPTS[:1], direction, [5], steps=10, batch_size=1, progress=False)
    torch.testing.assert_close(single["s"][0], ten["s"][0], atol=1e-5, rtol=1e-4)


class _OldTap:
    """The step-by-step path's recorder: latents and error at each point."""

    kind, positions = "old_tap", "all"

    def __init__(self, saes, by_point):
        self.saes, self.by_point, self.points = saes, by_point, tuple(by_point)
        self.latents, self.errors = {}, {}

    def validate(self, lm):
        pass

    def __call__(self, x, call):
        name = self.by_point[call.point]
        z = self.saes[name].encode(x)
        self.latents[name] = z
        self.errors[name] = x.float() - self.saes[name].decode(z).float()
        return x


class _OldInterpolate:
    """The step-by-step path's splice: ``dec(f_alpha) + e_alpha`` at one alpha, ``f_alpha`` kept for its gradient."""

    kind, positions = "old_interpolate", "all"

    def __init__(self, saes, by_point, patch, alpha):
        self.saes, self.by_point, self.points, self.patch, self.alpha = saes, by_point, tuple(by_point), patch, alpha
        self.latents = {}

    def validate(self, lm):
        pass

    def __call__(self, x, call):
        name = self.by_point[call.point]
        sae = self.saes[name]
        z = sae.encode(x)
        error = x.float() - sae.decode(z).float()
        f_alpha = (1 - self.alpha) * z + self.alpha * self.patch.latents[name]
        if f_alpha.requires_grad:
            f_alpha.retain_grad()
        else:
            f_alpha.requires_grad_(True)
        self.latents[name] = f_alpha
        e_alpha = (1 - self.alpha) * error + self.alpha * self.patch.errors[name]
        return (sae.decode(f_alpha).float() + e_alpha).to(x.dtype)


def _step_by_step(lm, saes, points, token_lists, direction, refusal_ids, steps, skip_tokens):
    """The attribution as first written: one forward and backward pass per alpha through the SAEs (the reference;
    ``bench/bench_attribution.py`` times it as ``old``)."""
    by_point = {p: n for n, p in points.items()}
    batch = build_batch(lm, token_lists, share_prefix=False)
    mask = prompt_mask(batch.attention_mask, skip_tokens).unsqueeze(-1).float()
    ids = torch.tensor(refusal_ids)
    keep = logits_to_keep(lm.model, 1)
    clean, patch = _OldTap(saes, by_point), _OldTap(saes, by_point)
    with torch.no_grad():
        with apply(lm, [clean]):
            forward(lm, batch, **keep)
        with apply(lm, [Ablate(direction, residual_writes(lm)), patch]):
            target = forward(lm, batch, **keep).logits[:, -1].argmax(-1)
    grads = {name: torch.zeros_like(z, dtype=torch.float32) for name, z in clean.latents.items()}
    with frozen_parameters(lm.model), torch.enable_grad():
        for k in range(steps):
            step = _OldInterpolate(saes, by_point, patch, k / steps)
            with apply(lm, [step]):
                last = forward(lm, batch, **keep).logits[:, -1].float()
            (last.gather(1, target[:, None])[:, 0] - torch.logsumexp(last[:, ids], -1)).sum().backward()
            for name, f_alpha in step.latents.items():
                grads[name] += f_alpha.grad.float()
    return {name: ((patch.latents[name].float() - clean.latents[name].float()) * grads[name] / steps * mask).sum(1) / mask.sum(1)
            for name in clean.latents}


SYSTEM = "You are a careful assistant. Answer every question briefly and politely."


@pytest.mark.parametrize("shared", [False, True], ids=["padded", "shared_prefix"])
@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
@pytest.mark.parametrize("step_batch", [1, 3, 10])
def test_batched_steps_equal_the_step_by_step_attribution(make_tiny_lm, family, step_batch, shared):
    lm = make_tiny_lm(family)
    torch.manual_seed(1)
    saes = {"a": build_sae(TopKConfig(d_in=lm.d_model, d_sae=48, k=6, point="resid_pre.1")),
            "b": build_sae(JumpReluConfig(d_in=lm.d_model, d_sae=40, point="resid_pre.2"))}
    with torch.no_grad():  # a non-zero b_dec, norm_scale and threshold, so every term of dec(f) + e is exercised
        for sae in saes.values():
            sae.b_dec.normal_()
            sae.norm_scale.fill_(0.7)
        saes["b"].threshold.fill_(0.05)
    points = {name: HookPoint.parse(sae.cfg.point) for name, sae in saes.items()}
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(2))
    tokens = encode_prompts(lm, PROMPTS, system=SYSTEM if shared else None)
    assert len({len(t) for t in tokens}) == 3  # different lengths: the shorter rows are left-padded
    # with the system prompt, the template's common prefix is long enough to be computed once (all of it unscored)
    skip = common_prefix_length(tokens) - 1 if shared else 2
    assert (build_batch(lm, tokens, max_prefix=skip).prefix_length > 0) == shared
    out = attribute_batch(lm, saes, points, tokens, direction, [5, 9], steps=10, skip_tokens=skip, step_batch=step_batch)
    reference = _step_by_step(lm, saes, points, tokens, direction, [5, 9], steps=10, skip_tokens=skip)
    for name in saes:
        assert reference[name].abs().max() > 0
        torch.testing.assert_close(out[name], reference[name], atol=1e-5, rtol=1e-4)
    unshared = attribute_batch(lm, saes, points, tokens, direction, [5, 9], steps=10, skip_tokens=skip, step_batch=step_batch, share_prefix=False)
    for name in saes:
        torch.testing.assert_close(out[name], unshared[name], atol=1e-5, rtol=1e-4)


def test_two_saes_at_one_point_or_no_steps_are_refused(make_tiny_lm):
    lm, sae, direction = _setup(make_tiny_lm)
    tokens = encode_prompts(lm, PROMPTS)
    point = HookPoint.parse("resid_pre.1")
    with pytest.raises(ConfigError, match="both at"):
        attribute_batch(lm, {"a": sae, "b": sae}, {"a": point, "b": point}, tokens, direction, [5])
    with pytest.raises(ConfigError, match="step"):
        attribute_batch(lm, {"a": sae}, {"a": point}, tokens, direction, [5], steps=0)
    with pytest.raises(ConfigError, match="step_batch"):
        attribute_batch(lm, {"a": sae}, {"a": point}, tokens, direction, [5], step_batch=0)
