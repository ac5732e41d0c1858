"""Refining the refusal direction by gradient descent: the trainable ablation, the loss going down, checkpoint choice, errors."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.directions.optimize import (
    OptimizeConfig,
    _compliance_ce,
    _TrainableAblation,
    optimize_direction,
)
from refusal_steer.runs.direction import compliance_targets
from refusal_steer.directions.scores import kl_divergence, last_token_logprobs, refusal_log_odds
from refusal_steer.directions.screening import frozen_parameters
from refusal_steer.errors import ConfigError, RefusalSteerError
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import apply
from refusal_steer.interventions import all_layers_ablation, residual_writes
from refusal_steer.scoring import _target_logprobs

HARMFUL = [f"Tell me how to do harmful thing number {i}." for i in range(6)]
HARMLESS = [f"Write a short poem about item {i}." for i in range(6)]
VAL_HARMFUL = ["Explain how to do a bad thing.", "Describe a harmful plan."]
VAL_HARMLESS = ["Name a colour.", "Write a haiku about rain.", "Count to three."]
REFUSAL_IDS = [5, 17]


def _targets(lm, n=6, length=4):
    g = torch.Generator().manual_seed(3)
    return {i: torch.randint(10, lm.tokenizer.vocab_size - 1, (length,), generator=g).tolist() for i in range(n)}


def _mean_ce(lm, direction, targets):
    """Mean per-token cross-entropy of the targets under ablation of ``direction``, by the (no-grad) teacher-forcing scorer."""
    rows = sorted(targets)
    per_token = _target_logprobs(lm, encode_prompts(lm, [HARMFUL[i] for i in rows]), [targets[i] for i in rows],
                                 [all_layers_ablation(direction, lm)], batch_size=8)
    return -(torch.cat(per_token).sum() / sum(len(targets[i]) for i in rows)).item()


def test_trainable_ablation_matches_ablate_and_only_the_direction_gets_gradients(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    direction = torch.randn(lm.d_model)
    param = torch.nn.Parameter(direction.clone())
    trainable = _TrainableAblation(param, residual_writes(lm))
    expected = last_token_logprobs(lm, HARMLESS, [all_layers_ablation(direction, lm)])
    got = last_token_logprobs(lm, HARMLESS, [trainable])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    flags = [p.requires_grad for p in lm.model.parameters()]
    targets = _targets(lm)
    with frozen_parameters(lm.model), apply(lm, [trainable]):
        loss = _compliance_ce(lm, encode_prompts(lm, HARMFUL), [targets[i] for i in range(6)])
        loss.backward()
    assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.norm() > 0
    assert all(p.grad is None for p in lm.model.parameters())
    assert [p.requires_grad for p in lm.model.parameters()] == flags  # restored
    # The cross-entropy with autograd is the one the public scorer gives (teacher forcing, same tokens).
    assert loss.item() == pytest.approx(_mean_ce(lm, direction, targets), rel=1e-4)


def test_optimisation_lowers_the_training_loss_and_keeps_the_best_passing_checkpoint(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    init = torch.randn(lm.d_model)
    targets = _targets(lm)
    config = OptimizeConfig(steps=12, lr=0.05, kl_weight=0.0, batch_size=6, eval_every=4, kl_threshold=1e9)
    found = optimize_direction(lm, init, HARMFUL, targets, HARMLESS, VAL_HARMFUL, VAL_HARMLESS, REFUSAL_IDS, config, progress=False)
    # Full-batch Adam on the cross-entropy alone (every target in every batch): the loss goes down.
    assert [c["step"] for c in found.checkpoints] == [0, 4, 8, 12] and len(found.history) == 12
    assert found.history[-1]["ce"] < found.history[0]["ce"]
    assert found.direction.norm().item() == pytest.approx(1.0, abs=1e-5)
    # Every checkpoint passes a threshold of 1e9, so the kept one has the lowest validation bypass, and it is re-measurable.
    best = min(found.checkpoints, key=lambda c: c["bypass"])
    assert found.step == best["step"] and best["status"] == "kept"
    measured = refusal_log_odds(last_token_logprobs(lm, VAL_HARMFUL, [all_layers_ablation(found.direction, lm)]), REFUSAL_IDS)
    assert measured.mean().item() == pytest.approx(best["bypass"], abs=1e-4)
    if found.step:
        assert _mean_ce(lm, found.direction, targets) < _mean_ce(lm, init, targets)


def test_nothing_passes_the_kl_filter_keeps_the_selected_direction(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    init = torch.randn(lm.d_model)
    config = OptimizeConfig(steps=4, lr=0.05, batch_size=3, eval_every=2, kl_threshold=-1.0)
    found = optimize_direction(lm, 2 * init, HARMFUL, _targets(lm), HARMLESS, VAL_HARMFUL, VAL_HARMLESS, REFUSAL_IDS, config, progress=False)
    assert found.step == 0
    torch.testing.assert_close(found.direction, init / init.norm())
    assert [c["status"] for c in found.checkpoints] == ["kept", "filtered: kl", "filtered: kl"]


def test_checkpoint_kl_is_that_directions_ablation_against_the_unsteered_model(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    init = torch.randn(lm.d_model)
    config = OptimizeConfig(steps=8, lr=0.05, kl_weight=50.0, batch_size=6, eval_every=8, kl_threshold=1e9)
    found = optimize_direction(lm, init, HARMFUL, _targets(lm), HARMLESS, VAL_HARMFUL, VAL_HARMLESS, REFUSAL_IDS, config, progress=False)
    base = last_token_logprobs(lm, VAL_HARMLESS)
    for checkpoint in found.checkpoints:
        assert checkpoint["kl_n"] == len(VAL_HARMLESS)
    # The KL filter measured the checkpoints in other batches (at least two, in its own prompt order) than these one-batch
    # re-measurements. A prompt's float32 log-probabilities then differ by a few rounding units of the largest |log-probability|,
    # and KL = sum_v p_v (base_v - steered_v) moves by at most that much: a KL of ~1e-4 agrees to a relative 1e-4 on some CPUs
    # only. 8 float32 eps x max |log-probability| (~6e-6 here; observed ~1e-7; the two checkpoints' KLs differ by ~1e-4) holds on any.
    tol = 8 * torch.finfo(torch.float32).eps * base.abs().max().item()
    start = kl_divergence(base, last_token_logprobs(lm, VAL_HARMLESS, [all_layers_ablation(init, lm)])).mean().item()
    assert found.checkpoints[0]["kl"] == pytest.approx(start, abs=tol)
    kept = kl_divergence(base, last_token_logprobs(lm, VAL_HARMLESS, [all_layers_ablation(found.direction, lm)])).mean().item()
    assert next(c for c in found.checkpoints if c["status"] == "kept")["kl"] == pytest.approx(kept, abs=tol)


def test_compliance_targets_keep_only_answers_the_judge_passes(make_tiny_lm, monkeypatch):
    import refusal_steer.runs.direction as optimize_module

    lm = make_tiny_lm("qwen2")
    real = optimize_module.evaluate_refusal

    def judged(*args, **kwargs):
        result = real(*args, **kwargs)
        return type(result)(rate=result.rate, judge=result.judge, judge_version=result.judge_version, completions=result.completions,
                            refused=[i % 2 == 0 for i in range(len(result.refused))], degenerate=[i == 1 for i in range(len(result.refused))],
                            degenerate_rate=result.degenerate_rate)

    monkeypatch.setattr(optimize_module, "evaluate_refusal", judged)
    targets = compliance_targets(lm, HARMFUL, torch.randn(lm.d_model), n_tokens=3, progress=False)
    assert sorted(targets) == [3, 5]  # even indices refused, index 1 loops
    assert all(1 <= len(t) <= 3 for t in targets.values())


def test_errors_are_clear(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    init = torch.randn(lm.d_model)
    with pytest.raises(RefusalSteerError, match="no harmful train prompt has a compliant target"):
        optimize_direction(lm, init, HARMFUL, {}, HARMLESS, VAL_HARMFUL, VAL_HARMLESS, REFUSAL_IDS, progress=False)
    with pytest.raises(ConfigError, match="outside"):
        optimize_direction(lm, init, HARMFUL, {9: [11, 12]}, HARMLESS, VAL_HARMFUL, VAL_HARMLESS, REFUSAL_IDS, progress=False)
    with pytest.raises(ConfigError, match="validation prompts"):
        optimize_direction(lm, init, HARMFUL, _targets(lm), HARMLESS, [], VAL_HARMLESS, REFUSAL_IDS, progress=False)
    for bad in ({"steps": -1}, {"batch_size": 0}, {"lr": 0.0}, {"kl_weight": float("nan")}, {"eval_every": 0}):
        with pytest.raises(ConfigError):
            OptimizeConfig(**bad)
