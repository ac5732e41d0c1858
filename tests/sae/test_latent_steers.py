"""Latent clamps and latent addition: the arithmetic, the error term, batching, specs and bad input."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError, ShapeMismatchError
from refusal_steer.generation import generate
from refusal_steer.hooks import HookCall, HookPoint, Positions, apply
from refusal_steer.interventions import fingerprint, from_spec, to_spec
from refusal_steer.sae import LatentAdd, LatentClamp, TopKConfig, build_sae, save_sae
from refusal_steer.sae.io import load_sae
from refusal_steer.scoring import next_token_logprobs
from tests.conftest import FAMILIES

SYSTEM = "Explain how a computer works: a processor runs instructions."
PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea.", "What is two plus two?"]


def _sae(d_in, point="resid_pre.1", seed=0, d_sae=64, k=8):
    torch.manual_seed(seed)
    sae = build_sae(TopKConfig(d_in=d_in, d_sae=d_sae, k=k, point=point))
    with torch.no_grad():
        sae.norm_scale.fill_(0.5)
        sae.b_dec.normal_()
    return sae


def _call(x):
    return HookCall(point=HookPoint.parse("resid_pre.1"), positions=Positions.all_prompt(x.shape[0], x.shape[1], x.device))


def test_clamp_keeps_the_error_term_exactly_as_the_papers_write_it():
    sae = _sae(16)
    x = torch.randn(2, 5, 16) * 3
    latents = (1, 5, 7, 30)
    for mode, value in (("scale", -3.0), ("scale", 0.0), ("set", 2.5)):
        clamp = LatentClamp(sae, "resid_pre.1", latents=latents, mode=mode, value=value)
        z = sae.encode(x)
        z_new = z.clone()
        z_new[..., list(latents)] = z[..., list(latents)] * value if mode == "scale" else value
        expected = sae.decode(z_new) + (x - sae.decode(z))  # x' = dec(f') + (x - dec(f)), Yeo et al.
        torch.testing.assert_close(clamp(x, _call(x)), expected, atol=1e-5, rtol=1e-5)
        # without the error term: the clamped reconstruction itself
        no_error = LatentClamp(sae, "resid_pre.1", latents=latents, mode=mode, value=value, keep_error=False)
        torch.testing.assert_close(no_error(x, _call(x)), sae.decode(z_new), atol=1e-5, rtol=1e-5)
    # multiplying by 1 changes nothing (the SAE's own reconstruction error never enters the stream)
    identity = LatentClamp(sae, "resid_pre.1", latents=latents, mode="scale", value=1.0)
    assert torch.equal(identity(x, _call(x)), x)


def test_latent_add_is_the_decoder_row_in_model_units_times_max_times_coef():
    sae = _sae(16)
    x = torch.randn(2, 5, 16)
    add = LatentAdd(sae, "resid_pre.1", latent=9, max_activation=4.0, coef=-1.5)
    # the row in model units: decode(e_9) - decode(0)
    e = torch.zeros(64)
    e[9] = 1.0
    row = sae.decode(e) - sae.decode(torch.zeros(64))
    torch.testing.assert_close(add(x, _call(x)), x + row * 4.0 * -1.5, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_steers_batched_equal_one_by_one_and_shared_prefix_equals_unshared(make_tiny_lm, family):
    from refusal_steer.features.steerers import hybrid2_steer, hybrid_steer

    lm = make_tiny_lm(family)
    sae = _sae(lm.d_model, d_sae=64, k=8)
    with torch.no_grad():
        sae.W_dec.mul_(4.0)
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(5))
    steers = {
        "scale": [LatentClamp(sae, "resid_pre.1", latents=tuple(range(0, 64, 3)), mode="scale", value=-3.0, skip_tokens=12)],
        "set": [LatentClamp(sae, "resid_pre.1", latents=(2, 3, 40), mode="set", value=6.0, skip_tokens=12)],
        "add": [LatentAdd(sae, "resid_pre.1", latent=4, max_activation=5.0, coef=2.0)],
        "hybrid": hybrid_steer(direction, sae, "resid_pre.1", 4, 5.0, 2.0),
        "hybrid2": hybrid2_steer(direction, lm, sae, "resid_pre.1", 4, 5.0, 2.0),
    }
    if family != "qwen2":  # every steer on one family; on the others the clamp and the hybrid (ablation + addition)
        steers = {name: steers[name] for name in ("scale", "hybrid")}
    kwargs = dict(max_new_tokens=3, system=SYSTEM, progress=False)
    plain = [c.token_ids for c in generate(lm, PROMPTS, batch_size=4, **kwargs)]
    for name, steer in steers.items():
        shared = [c.token_ids for c in generate(lm, PROMPTS, steer, batch_size=4, **kwargs)]
        unshared = [c.token_ids for c in generate(lm, PROMPTS, steer, batch_size=4, share_prefix=False, **kwargs)]
        one_by_one = [c.token_ids for c in generate(lm, PROMPTS, steer, batch_size=1, share_prefix=False, **kwargs)]
        assert shared == unshared == one_by_one, name
        lp_shared = next_token_logprobs(lm, PROMPTS, steer, batch_size=4, system=SYSTEM)
        lp_single = torch.cat([next_token_logprobs(lm, [p], steer, batch_size=1, system=SYSTEM) for p in PROMPTS])
        torch.testing.assert_close(lp_shared, lp_single, atol=1e-4, rtol=1e-4)
        assert shared != plain, f"{name} changed nothing, so the test proves nothing"


def test_latent_steers_round_trip_through_specs_and_fingerprints(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    save_sae(_sae(lm.d_model), tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    steer = [LatentClamp(sae, "resid_pre.1", latents=(3, 4), mode="set", value=2.0, skip_tokens=3),
             LatentAdd(sae, "resid_pre.1", latent=7, max_activation=3.0, coef=-1.0)]
    entries, tensors = to_spec(steer)
    assert entries[0]["latents"] == [3, 4] and entries[0]["sae"] == str((tmp_path / "sae").resolve())
    back = from_spec(entries, tensors, lm=lm)
    assert fingerprint(back) == fingerprint(steer)
    changed = [LatentClamp(sae, "resid_pre.1", latents=(3, 4), mode="set", value=2.5, skip_tokens=3), steer[1]]
    assert fingerprint(changed) != fingerprint(steer)
    x = torch.randn(1, 4, lm.d_model)
    for a, b in zip(steer, back):
        assert torch.equal(a(x, _call(x)), b(x, _call(x)))


def test_bad_latent_steers_say_what_is_wrong(make_tiny_lm):
    sae = _sae(16)
    with pytest.raises(ShapeMismatchError, match="out of range"):
        LatentClamp(sae, "resid_pre.1", latents=(64,))
    with pytest.raises(ConfigError, match="mode"):
        LatentClamp(sae, "resid_pre.1", latents=(1,), mode="multiply")
    with pytest.raises(ConfigError, match="finite"):
        LatentClamp(sae, "resid_pre.1", latents=(1,), value=float("inf"))
    with pytest.raises(ConfigError, match="latents"):
        LatentClamp(sae, "resid_pre.1", latents=())
    with pytest.raises(ConfigError, match="coef"):
        LatentAdd(sae, "resid_pre.1", latent=1, coef=float("nan"))
    lm = make_tiny_lm("qwen2")
    with pytest.raises(ShapeMismatchError):
        with apply(lm, [LatentClamp(sae, "resid_pre.1", latents=(1,))]):  # an SAE of the wrong width
            pass
