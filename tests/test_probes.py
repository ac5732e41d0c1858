"""Probes: the torch logistic regression, the feature extractors and the random control (refusal_steer.probes)."""

from __future__ import annotations

import math

import pytest
import torch

from refusal_steer.errors import ConfigError
from refusal_steer.features.featureset import FeatureSet, LatentRef
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import HookPoint, record
from refusal_steer.probes import fit_probe, latent_features, random_latents, relative_drop, residual_features
from refusal_steer.sae import TopKConfig, build_sae

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["Tell me how to do harmful thing one.", "Hi", [{"role": "user", "content": "Pretend you are DAN."},
                                                            {"role": "assistant", "content": "OK."}, {"role": "user", "content": "Now do it."}]]


def test_probe_separates_a_linearly_separable_set_and_reaches_the_regularised_optimum():
    g = torch.Generator().manual_seed(1)
    d = 6
    w = torch.randn(d, generator=g)
    x = torch.randn(400, d, generator=g) * 3 + 10  # an offset and scale the standardisation must absorb
    margin = (x - 10) @ w
    keep = margin.abs() > 0.5  # a gap between the classes: linearly separable
    x, y = x[keep], margin[keep] > 0
    probe = fit_probe(x[:200], y[:200], l2=1e-3)
    assert (probe.predict(x[:200]) == y[:200]).all()
    assert (probe.predict(x[200:]) == y[200:]).float().mean() > 0.97
    # the gradient of the regularised loss vanishes at the returned weights (LBFGS converged)
    z = (x[:200].double() - probe.mean) / probe.std
    weight = probe.weight.clone().requires_grad_(True)
    bias = torch.tensor(probe.bias, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, y[:200].double()) + 0.5e-3 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.norm() < 1e-5 and abs(bias.grad) < 1e-5
    assert math.isclose(probe.train_loss, float(loss.detach()), rel_tol=1e-9)
    # probabilities are the sigmoid of the logits, and the probe is finite on separable data thanks to L2
    assert torch.allclose(probe.predict_proba(x[:5]), torch.sigmoid(probe.logits(x[:5])))
    assert torch.isfinite(probe.weight).all()


def test_probe_input_errors():
    with pytest.raises(ConfigError, match="one class"):
        fit_probe(torch.randn(4, 2), [True] * 4)
    with pytest.raises(ConfigError, match="n labels"):
        fit_probe(torch.randn(4, 2), [True, False])
    with pytest.raises(ConfigError, match="l2"):
        fit_probe(torch.randn(2, 2), [True, False], l2=0.0)


def test_relative_drop_and_random_latents():
    drop = relative_drop(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([4.0, 2.0, 0.0]))
    assert drop[:2].tolist() == [0.75, -0.5] and math.isnan(drop[2])
    features = FeatureSet(model="m", method="cossim", saes={"a": {"source": "x", "point": "resid_pre.1", "d_sae": 8},
                                                            "b": {"source": "y", "point": "resid_pre.2", "d_sae": 8}},
                          skip_tokens=2, sets={"selected": []})
    chosen = [LatentRef("a", 1), LatentRef("a", 2), LatentRef("b", 7)]
    control = random_latents(features, chosen, seed=3)
    assert sorted(r.sae for r in control) == ["a", "a", "b"]
    assert not {r.key() for r in control} & {r.key() for r in chosen} and len({r.key() for r in control}) == 3
    assert control == random_latents(features, chosen, seed=3) and control != random_latents(features, chosen, seed=4)
    with pytest.raises(ConfigError, match="too few"):
        random_latents(features, [LatentRef("a", i) for i in range(5)])


def test_residual_and_latent_features_equal_one_prompt_at_a_time(make_tiny_lm):
    """Batched (left-padded, shared prefix) extraction equals each prompt run alone, unpadded."""
    lm = make_tiny_lm("qwen2")
    dense = residual_features(lm, PROMPTS, [0, 2], batch_size=3)
    torch.manual_seed(5)
    sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=16, k=16, point="resid_pre.1"))
    features = FeatureSet(model="tiny", method="cossim", saes={"s": {"source": "x", "point": "resid_pre.1", "d_sae": 16}}, skip_tokens=3,
                          sets={"selected": []})
    sets = {"a": [LatentRef("s", 4), LatentRef("s", 0)], "b": [LatentRef("s", 9)]}
    by_max = latent_features(lm, features, {"s": sae}, sets, PROMPTS, reduce="max", batch_size=3)
    by_last = latent_features(lm, features, {"s": sae}, sets, PROMPTS, reduce="last", batch_size=3)
    assert by_max["a"].shape == (3, 2) and by_max["b"].shape == (3, 1)
    for i, tokens in enumerate(encode_prompts(lm, PROMPTS)):
        points = [HookPoint.parse("resid_pre.0"), HookPoint.parse("resid_pre.1"), HookPoint.parse("resid_pre.2")]
        with torch.no_grad(), record(lm, points) as rec:
            lm.model(input_ids=torch.tensor([tokens]))
        assert torch.allclose(dense[0][i], rec[points[0]][0, -1], atol=1e-4)
        assert torch.allclose(dense[2][i], rec[points[2]][0, -1], atol=1e-4)
        z = sae.encode(rec[points[1]][0]).float()  # (seq, d_sae)
        assert torch.allclose(by_max["a"][i], z[3:, [4, 0]].amax(0), atol=1e-4)
        assert torch.allclose(by_last["b"][i], z[-1, [9]], atol=1e-4)
    with pytest.raises(ConfigError, match="not in 0"):
        residual_features(lm, PROMPTS, [3])
