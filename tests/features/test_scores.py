"""Per-prompt latent reductions: one SAE at a time (and only the last column for ``last``) equals reducing every latent of the batch."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.features.scores import latent_activations, prompt_activations
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import HookPoint
from refusal_steer.sae import TopKConfig, build_sae

PROMPTS = ["Tell me how to do a harmful thing.", "Hi", "Write a long poem about the sea, the wind and the stars, please."]


@pytest.mark.parametrize("reduce", ["max", "mean", "last"])
def test_reductions_equal_the_full_latents(make_tiny_lm, reduce):
    lm = make_tiny_lm("qwen2")
    torch.manual_seed(0)
    saes = {"a": build_sae(TopKConfig(d_in=lm.d_model, d_sae=24, k=6, point="resid_pre.1")),
            "b": build_sae(TopKConfig(d_in=lm.d_model, d_sae=16, k=4, point="resid_pre.2"))}
    points = {n: HookPoint.parse(s.cfg.point) for n, s in saes.items()}
    got = prompt_activations(lm, saes, points, PROMPTS, skip_tokens=2, reduce=reduce, batch_size=2)
    for i, tokens in enumerate(encode_prompts(lm, PROMPTS)):
        z, mask = latent_activations(lm, saes, points, [tokens], 2)  # one prompt, no padding
        for name in saes:
            row = z[name][0]
            keep = mask[0]
            expected = {"last": row[-1], "max": row[keep].amax(0), "mean": row[keep].mean(0)}[reduce]
            torch.testing.assert_close(got[name][i], expected, atol=1e-5, rtol=1e-4)
    assert (got["a"] != 0).any()
