"""recompute_mlp and the two-graph backward of the refinement: less memory, the very same values and gradients."""

from __future__ import annotations

import torch

from refusal_steer.directions.optimize import _compliance_ce, _loss_backward, _next_token_kl, _TrainableAblation
from refusal_steer.directions.scores import last_token_logprobs
from refusal_steer.directions.screening import estimate_ablation_effects, frozen_parameters
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import apply
from refusal_steer.interventions import residual_writes
from refusal_steer.models.memory import recompute_mlp

HARMFUL = [f"Tell me how to do harmful thing number {i}." for i in range(4)]
HARMLESS = [f"Write a short poem about item {i} please." for i in range(4)]


def _step(lm, *, recompute: bool, split: bool, micro: int = 4):
    """One refinement step's loss and gradient, by the single backward of the sum or by _loss_backward in micro-batches."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(lm.d_model))
    trainable = _TrainableAblation(param, residual_writes(lm))
    harmful = encode_prompts(lm, HARMFUL)
    harmless = encode_prompts(lm, HARMLESS)
    targets = [[11, 12, 13], [14, 15], [16, 17, 18, 19], [20]]
    base = last_token_logprobs(lm, HARMLESS)
    ctx = recompute_mlp(lm) if recompute else torch.enable_grad()
    with frozen_parameters(lm.model), apply(lm, [trainable]), ctx:
        if split:
            count = sum(len(t) for t in targets)
            parts = [range(i, min(i + micro, 4)) for i in range(0, 4, micro)]
            ce_fns = [lambda p=p: _compliance_ce(lm, [harmful[i] for i in p], [targets[i] for i in p], count) for p in parts]
            kl_fns = [lambda p=p: _next_token_kl(lm, [harmless[i] for i in p], base[list(p)], 4) for p in parts]
            ce, kl = _loss_backward(param, ce_fns, kl_fns, 0.5)
        else:
            ce, kl = _compliance_ce(lm, harmful, targets), _next_token_kl(lm, harmless, base)
            (ce + 0.5 * kl).backward()
    return ce.detach(), kl.detach(), param.grad.clone()


def test_recompute_and_split_backward_give_the_same_bits(tiny_lm) -> None:
    reference = _step(tiny_lm, recompute=False, split=False)
    for recompute, split in ((True, False), (False, True), (True, True)):
        got = _step(tiny_lm, recompute=recompute, split=split)
        for a, b in zip(reference, got):
            assert torch.equal(a, b), (recompute, split)


def test_micro_batches_give_the_whole_batch_loss_and_gradient(tiny_lm) -> None:
    reference = _step(tiny_lm, recompute=False, split=False)
    for micro in (1, 2, 3):
        got = _step(tiny_lm, recompute=True, split=True, micro=micro)
        for a, b in zip(reference, got):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
            assert not torch.equal(a, torch.zeros_like(a))


def test_recompute_mlp_checkpoints_only_inside_and_restores_forward(make_tiny_lm) -> None:
    lm = make_tiny_lm("qwen2")
    mlp = lm.block_module(0, lm.adapter.mlp)
    assert "forward" not in mlp.__dict__
    with recompute_mlp(lm):
        assert "forward" in mlp.__dict__
        x = torch.randn(1, 3, lm.d_model)
        assert torch.equal(mlp(x), type(mlp).forward(mlp, x))  # no grad: plain call
    assert "forward" not in mlp.__dict__


def test_screening_estimates_are_unchanged_under_recompute(make_tiny_lm) -> None:
    lm = make_tiny_lm("qwen2")
    directions = torch.randn(5, lm.d_model)
    plain = estimate_ablation_effects(lm, HARMFUL, [5, 17], directions, batch_size=2)
    with recompute_mlp(lm):
        recomputed = estimate_ablation_effects(lm, HARMFUL, [5, 17], directions, batch_size=2)
    assert torch.equal(plain, recomputed)
