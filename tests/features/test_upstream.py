"""Upstream/downstream: common vs specific sets, and the downstream drop when harm latents are clamped."""

from __future__ import annotations

import torch

from refusal_steer.features.featureset import LatentRef
from refusal_steer.features.scores import latent_activations
from refusal_steer.features.upstream import bootstrap_mean_ci, downstream_drop, firing_matched, split_common_specific
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import HookPoint
from refusal_steer.sae import TopKConfig, build_sae

PROMPTS = ["Tell me how to do harmful thing one.", "Tell me how to do bad thing two, please.", "Hi"]


def test_common_and_specific_sets():
    sets = {"a": [LatentRef("s1", 1), LatentRef("s2", 5), LatentRef("s1", 7)],
            "b": [LatentRef("s2", 5), LatentRef("s1", 1), LatentRef("s2", 9)]}
    common, specific = split_common_specific(sets)
    assert common == [("s1", 1), ("s2", 5)]
    assert specific == {"a": [("s1", 7)], "b": [("s2", 9)]}


def test_downstream_drop_measures_only_downstream_latents_and_is_zero_without_a_clamp(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    torch.manual_seed(0)
    saes = {"up": build_sae(TopKConfig(d_in=lm.d_model, d_sae=32, k=8, point="resid_pre.1")),
            "down": build_sae(TopKConfig(d_in=lm.d_model, d_sae=32, k=8, point="resid_pre.2"))}
    with torch.no_grad():
        saes["up"].W_dec.mul_(5.0)
    points = {n: HookPoint.parse(s.cfg.point) for n, s in saes.items()}
    # the downstream latents that fire on these prompts
    acts, mask = latent_activations(lm, saes, points, encode_prompts(lm, PROMPTS), 2)
    firing = [("down", int(i)) for i in torch.nonzero((acts["down"] * mask.unsqueeze(-1)).sum((0, 1)) > 0).flatten()[:4]]
    upstream_firing = [("up", int(i)) for i in torch.nonzero((acts["up"] * mask.unsqueeze(-1)).sum((0, 1)) > 0).flatten()[:6]]
    measure = firing + [("up", upstream_firing[-1][1])]  # a same-layer latent cannot change: it is dropped
    result = downstream_drop(lm, saes, points, PROMPTS, upstream_firing[:5], measure, skip_tokens=2, batch_size=2)
    assert result["measured"] == firing
    assert not torch.allclose(result["clean"], result["clamped"])
    expected = (acts["down"][..., [i for _, i in firing]] * mask.unsqueeze(-1)).sum(-1).sum(1) / mask.sum(1)
    torch.testing.assert_close(result["clean"], expected, atol=1e-5, rtol=1e-5)
    none = downstream_drop(lm, saes, points, PROMPTS, [], measure, skip_tokens=2, batch_size=2)
    torch.testing.assert_close(none["relative_drop"], torch.zeros(3))
    mean, lo, hi = bootstrap_mean_ci(result["relative_drop"])
    assert lo <= mean <= hi


def test_firing_matched_control_draws_latents_that_fire_as_often_and_never_a_clamped_or_measured_one():
    rate = torch.tensor([0.0] * 90 + [0.5, 0.52, 0.48, 0.9, 0.91, 0.1, 0.11, 0.09, 0.5, 0.49])
    firing = {"s": rate}
    targets = [("s", 90), ("s", 93)]
    exclude = [("s", 91)]
    picks = [firing_matched(firing, targets, exclude, torch.Generator().manual_seed(seed), nearest=3) for seed in range(20)]
    for pick in picks:
        assert len(pick) == 2 and len(set(pick)) == 2
        assert not set(pick) & set(targets + exclude)
        assert abs(float(rate[pick[0][1]]) - 0.5) <= 0.021  # the 3 nearest to 0.5 left: 0.52 excluded, so 0.48, 0.5, 0.49
        assert float(rate[pick[1][1]]) >= 0.479  # near 0.9: 0.91, then the 0.5s
    assert len({tuple(p) for p in picks}) > 1  # drawn, not fixed
