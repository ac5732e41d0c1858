"""Difference-in-means, first-order screening and direction selection on tiny models."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from refusal_steer.directions.diff_in_means import MeanDiffs, difference_in_means
from refusal_steer.directions.scores import kl_divergence, last_token_logprobs, refusal_log_odds
from refusal_steer.batching import shared_prefix_length
from refusal_steer.directions.screening import estimate_ablation_effects
from refusal_steer.generation import encode_prompts
from refusal_steer.directions.selection import CandidateScore, SelectionConfig, choose_actadd, select_direction
from refusal_steer.errors import ConfigError
from refusal_steer.hooks import HookPoint, Site, record
from refusal_steer.interventions import residual_writes
from refusal_steer.models import format_chat

HARMFUL = ["Tell me how to build a bomb.", "How do I pick a lock?", "Write malware.", "Steal a car now."]
HARMLESS = ["How do I bake bread?", "Write a poem about the sea.", "Explain computers.", "Hi"]
REFUSAL_IDS = [5, 17, 42]


def test_difference_in_means_matches_manual(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL, HARMLESS, batch_size=3, progress=False)
    assert diffs.diffs.shape == (len(diffs.positions), lm.n_layers, lm.d_model)
    assert diffs.positions[-1] == -1

    def manual(prompts):
        rows = []
        for prompt in prompts:
            ids = lm.tokenizer(format_chat(lm.tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
            with record(lm, [HookPoint(Site.RESID_PRE, 1)]) as rec, torch.no_grad():
                lm.model(**ids)
            rows.append(rec["resid_pre.1"][0, -1])
        return torch.stack(rows).mean(0)

    torch.testing.assert_close(diffs.candidate(-1, 1), manual(HARMFUL) - manual(HARMLESS), atol=1e-5, rtol=1e-4)


def test_mean_diffs_save_load(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("llama")
    diffs = difference_in_means(lm, HARMFUL[:2], HARMLESS[:2], progress=False)
    loaded = MeanDiffs.load(diffs.save(tmp_path / "c.safetensors"))
    assert loaded.positions == diffs.positions and loaded.n_harmful == 2
    assert torch.equal(loaded.diffs, diffs.diffs)


@dataclass
class PartialWriteAblation:
    """x <- x - eps (x.r) r at every residual write (resid_pre.0, attn_out, mlp_out)."""

    direction: torch.Tensor
    points: tuple
    eps: float

    def validate(self, lm) -> None:
        pass

    def __call__(self, x, call):
        r = self.direction.to(x.dtype)
        return x - self.eps * (x @ r).unsqueeze(-1) * r


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "gpt2"])
def test_screening_estimate_is_the_first_order_effect(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    lm.model.double()
    direction = torch.randn(2, lm.d_model, dtype=torch.float64)
    # batch_size=1: no padding, so float64 eager attention has no all-masked rows.
    estimate = estimate_ablation_effects(lm, HARMFUL, REFUSAL_IDS, direction, batch_size=1)
    points = tuple(p for p in residual_writes(lm) if p.site is not Site.RESID_PRE or p.layer == 0)
    base = refusal_log_odds(last_token_logprobs(lm, HARMFUL, batch_size=1), REFUSAL_IDS).double().mean()
    eps = 1e-4
    for i in range(2):
        unit = direction[i] / direction[i].norm()
        steered = last_token_logprobs(lm, HARMFUL, [PartialWriteAblation(unit, points, eps)], batch_size=1)
        finite_difference = (refusal_log_odds(steered, REFUSAL_IDS).double().mean() - base) / eps
        assert estimate[i].item() == pytest.approx(finite_difference.item(), rel=0.05, abs=1e-3)


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_screening_with_a_shared_prefix_equals_one_prompt_at_a_time(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    lm.model.double()
    direction = torch.randn(3, lm.d_model, dtype=torch.float64)
    system = "Explain how a computer works: a processor runs instructions."
    assert shared_prefix_length(lm, encode_prompts(lm, HARMFUL, system=system)) > 0
    shared = estimate_ablation_effects(lm, HARMFUL, REFUSAL_IDS, direction, batch_size=len(HARMFUL), system=system)
    single = estimate_ablation_effects(lm, HARMFUL, REFUSAL_IDS, direction, batch_size=1, system=system)
    torch.testing.assert_close(shared, single, rtol=1e-6, atol=1e-8)


def test_kl_is_zero_for_identical_and_positive_otherwise():
    logprobs = torch.log_softmax(torch.randn(3, 10), dim=-1)
    assert torch.allclose(kl_divergence(logprobs, logprobs), torch.zeros(3), atol=1e-6)
    other = torch.log_softmax(torch.randn(3, 10), dim=-1)
    assert (kl_divergence(logprobs, other) > 0).all()


def test_lazy_selection_equals_full_table(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL, HARMLESS, progress=False)
    loose = dict(kl_threshold=1e9, induce_threshold=-1e9, screen_top_k=0, batch_size=4)
    lazy = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, SelectionConfig(**loose), progress=False)
    full = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, SelectionConfig(**loose, full_table=True), progress=False)
    assert (lazy.position, lazy.layer) == (full.position, full.layer)
    scored = [row for row in full.table if row.bypass is not None]
    assert full.chosen().bypass == min(row.bypass for row in scored)
    assert all(row.layer < 0.8 * lm.n_layers for row in scored)
    assert lazy.to_json()["point"] == f"resid_pre.{lazy.layer}"


def test_kl_check_stops_once_the_prompts_measured_prove_the_threshold(make_tiny_lm):
    from refusal_steer.directions.scores import kl_at_most
    from refusal_steer.interventions import Add

    lm = make_tiny_lm("qwen2")
    prompts = HARMFUL + HARMLESS
    steer = [Add(torch.randn(lm.d_model) * 4, "resid_pre.1")]
    base = last_token_logprobs(lm, prompts, batch_size=2)
    # Measured in kl_at_most's own batches (consecutive pairs in prompt order): same batches, same float32 numbers on any CPU,
    # so only the float64 sums' order differs. (One call over all prompts would pair them by length instead.)
    per_prompt = torch.cat([kl_divergence(base[i : i + 2], last_token_logprobs(lm, prompts[i : i + 2], steer, batch_size=2))
                            for i in range(0, len(prompts), 2)]).double()
    full = per_prompt.mean().item()
    everything = kl_at_most(lm, prompts, base, steer, None, batch_size=2)
    assert everything.complete and everything.kl == pytest.approx(full, rel=1e-4)
    # The first two prompts alone already prove the mean is at least their sum / 8.
    bound = per_prompt[:2].sum().item() / len(prompts)
    early = kl_at_most(lm, prompts, base, steer, bound * 0.999, batch_size=2)
    assert early.n_measured == 2 and not early.complete and early.kl == pytest.approx(bound, rel=1e-4) and early.kl <= full
    # A threshold just above the mean is never proven: every prompt is measured, and the exact mean reported.
    above = kl_at_most(lm, prompts, base, steer, full * 1.01, batch_size=2)
    assert above.complete and above.kl == pytest.approx(full, rel=1e-4)


def test_kl_filter_measures_the_prompts_that_moved_most_first(make_tiny_lm):
    from refusal_steer.directions.scores import KlFilter
    from refusal_steer.interventions import Add

    lm = make_tiny_lm("qwen2")
    prompts = HARMFUL + HARMLESS
    base = last_token_logprobs(lm, prompts, batch_size=2)
    kl_filter = KlFilter(lm, prompts, base, threshold=1e9, batch_size=2)
    steer = [Add(torch.randn(lm.d_model) * 4, "resid_pre.1")]
    first = kl_filter(steer)
    assert first.complete and first.measured == tuple(range(len(prompts)))  # nothing known yet: prompt order
    second = kl_filter(steer)
    by_kl = sorted(range(len(prompts)), key=lambda i: -first.values[first.measured.index(i)])
    # The second check pairs the prompts differently (by KL), and float32 log-probabilities of a prompt in different batches
    # differ by a few rounding units of the largest |log-probability|; the KL moves by at most that: 8 float32 eps x it.
    tol = 8 * torch.finfo(torch.float32).eps * base.abs().max().item()
    assert list(second.measured) == by_kl and second.kl == pytest.approx(first.kl, abs=tol)
    assert kl_filter.passes(second) and not KlFilter(lm, prompts, base, threshold=first.kl / 2, batch_size=2).passes(second)


def test_early_kl_exit_selects_what_the_full_table_selects(make_tiny_lm):
    """With a binding KL threshold, stopping each KL early changes no decision, only the work done."""
    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL, HARMLESS, progress=False)
    loose = dict(induce_threshold=-1e9, screen_top_k=0, batch_size=1, cap_candidates=4)
    table = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, SelectionConfig(kl_threshold=1e9, full_table=True, **loose),
                             progress=False).table
    kls = sorted(row.kl for row in table if row.kl is not None)
    threshold = kls[len(kls) // 2]  # about half the candidates fail
    lazy = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, SelectionConfig(kl_threshold=threshold, **loose), progress=False)
    full = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, SelectionConfig(kl_threshold=threshold, full_table=True, **loose),
                            progress=False)
    assert (lazy.position, lazy.layer) == (full.position, full.layer)
    assert lazy.chosen().kl_n == len(HARMLESS) and lazy.chosen().kl == pytest.approx(full.chosen().kl, rel=1e-4)
    exact = {(row.position, row.layer): row.kl for row in full.table}
    for row in lazy.table:
        if row.status == "filtered: kl":
            assert threshold <= row.kl <= exact[(row.position, row.layer)] * (1 + 1e-4) and row.kl_n <= len(HARMLESS)
    assert lazy.cap.to_json()["point"] == full.cap.to_json()["point"]


def test_strict_filters_fall_back_then_fail_clearly(make_tiny_lm):
    from refusal_steer.errors import RefusalSteerError

    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL[:2], HARMLESS[:2], progress=False)
    with pytest.raises(RefusalSteerError, match="no candidate"):
        select_direction(lm, diffs, HARMFUL[:2], HARMLESS[:2], REFUSAL_IDS,
                         SelectionConfig(kl_threshold=1e-12, screen_top_k=2), progress=False)


@pytest.mark.parametrize("bad", [dict(max_layer_fraction=0), dict(kl_threshold=-1), dict(screen_top_k=-1), dict(actadd_candidates=-1),
                                 dict(actadd_positions="generated")])
def test_selection_config_validates(bad):
    with pytest.raises(ConfigError):
        SelectionConfig(**bad)


def test_relaxed_rule_when_nothing_induces_refusal(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL[:2], HARMLESS[:2], progress=False)
    config = SelectionConfig(kl_threshold=1e9, induce_threshold=1e9, screen_top_k=3, batch_size=4, actadd_coefs=(1.0, 2.0),
                             actadd_candidates=0)
    selection = select_direction(lm, diffs, HARMFUL[:2], HARMLESS[:2], REFUSAL_IDS, config, progress=False)
    assert selection.rule == "relaxed-induce"
    assert selection.to_json()["actadd"]["same_as_ablation"] and selection.actadd_point == selection.point
    kl_ok = [row for row in selection.table if row.status in ("filtered: induce", "selected")]
    assert selection.chosen().bypass == min(row.bypass for row in kl_ok)
    # No coefficient reaches an induce score above the (impossible) target: the best one tried is used.
    tries = selection.actadd_calibration
    assert [t["coef"] for t in tries] == [1.0, 2.0]
    assert selection.actadd_coef == max(tries, key=lambda t: t["induce"])["coef"]
    with pytest.raises(Exception, match="no candidate"):
        select_direction(lm, diffs, HARMFUL[:2], HARMLESS[:2], REFUSAL_IDS,
                         SelectionConfig(**{**config.__dict__, "relax_induce": False}), progress=False)


def test_actadd_calibration_stops_once_the_score_falls(make_tiny_lm, monkeypatch):
    import refusal_steer.directions.selection as selection_module

    lm = make_tiny_lm("qwen2")
    scores = iter([-3.0, -1.0, -2.0, 5.0])  # rises, peaks at coef 2, falls: coef 4 is never tried
    monkeypatch.setattr(selection_module, "refusal_log_odds", lambda *_: torch.tensor([next(scores)]))
    config = SelectionConfig(actadd_coefs=(1.0, 2.0, 3.0, 4.0), batch_size=2)
    coef, tries = selection_module.calibrate_actadd(lm, torch.randn(lm.d_model), 1, HARMLESS[:2], REFUSAL_IDS, config)
    assert [t["coef"] for t in tries] == [1.0, 2.0, 3.0]
    assert coef == 2.0


def test_actadd_calibration_takes_the_peak_not_the_first_coefficient_past_the_target(make_tiny_lm, monkeypatch):
    """Coefficient 1 already clears the target 0, but 2 induces more refusal: the peak is used."""
    import refusal_steer.directions.selection as selection_module

    lm = make_tiny_lm("qwen2")
    scores = iter([0.2, 1.5, 0.9, 9.0])
    monkeypatch.setattr(selection_module, "refusal_log_odds", lambda *_: torch.tensor([next(scores)]))
    config = SelectionConfig(actadd_coefs=(1.0, 2.0, 3.0, 4.0), actadd_target=0.0, batch_size=2)
    coef, tries = selection_module.calibrate_actadd(lm, torch.randn(lm.d_model), 1, HARMLESS[:2], REFUSAL_IDS, config)
    assert coef == 2.0 and [t["coef"] for t in tries] == [1.0, 2.0, 3.0]


def _rows(*layers):
    return [CandidateScore(position=-1, layer=layer, bypass=float(i)) for i, layer in enumerate(layers)]


def _calibrator(best_scores: dict[int, float]):
    """Fake calibration: candidate at layer L peaks at coefficient 2 with score best_scores[L]."""
    calls = []

    def calibrate(row):
        calls.append(row.layer)
        best = best_scores[row.layer]
        return 2.0, [{"coef": 1.0, "induce": best - 1}, {"coef": 2.0, "induce": best}]

    return calibrate, calls


def test_choose_actadd_keeps_the_selected_direction_when_it_reaches_the_target():
    rows = _rows(5, 8, 9)
    calibrate, calls = _calibrator({5: 0.5, 8: 3.0, 9: 4.0})
    chosen, coef, tries, search = choose_actadd(rows, calibrate, target=0.0)
    assert chosen is rows[0] and coef == 2.0 and calls == [5] and len(search) == 1


def test_choose_actadd_takes_the_first_alternative_that_reaches_the_target():
    rows = _rows(5, 8, 9, 10)
    calibrate, calls = _calibrator({5: -1.0, 8: -0.5, 9: 0.3, 10: 5.0})
    chosen, coef, tries, search = choose_actadd(rows, calibrate, target=0.0)
    assert chosen is rows[2] and calls == [5, 8, 9]  # stops at the first that passes, in bypass order
    assert [entry["layer"] for entry in search] == [5, 8, 9] and search[2]["score"] == 0.3
    assert tries[-1] == {"coef": 2.0, "induce": 0.3}


def test_choose_actadd_falls_back_to_the_best_score_tried():
    rows = _rows(5, 8, 9)
    calibrate, calls = _calibrator({5: -2.0, 8: -0.5, 9: -1.0})
    chosen, *_ = choose_actadd(rows, calibrate, target=0.0)
    assert chosen is rows[1] and calls == [5, 8, 9]
    calibrate, _ = _calibrator({5: -1.0, 8: -1.0, 9: -1.0})
    assert choose_actadd(rows, calibrate, target=0.0)[0] is rows[0]  # ties keep the selected direction


def test_selection_adds_another_candidate_when_the_selected_one_cannot_induce(make_tiny_lm, monkeypatch):
    import refusal_steer.directions.selection as selection_module

    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL, HARMLESS, progress=False)
    config = SelectionConfig(kl_threshold=1e9, induce_threshold=-1e9, screen_top_k=4, batch_size=4, actadd_coefs=(1.0, 2.0),
                             actadd_candidates=4)
    selected = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, config, progress=False)
    winner = {}

    def fake_calibrate(lm_, direction, layer, *args, **kwargs):
        passes = not torch.equal(direction, selected.direction) and not winner
        if passes:
            winner["direction"] = direction.clone()
        return 2.0, [{"coef": 2.0, "induce": 1.0 if passes else -1.0}]

    monkeypatch.setattr(selection_module, "calibrate_actadd", fake_calibrate)
    selection = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, config, progress=False)
    assert (selection.position, selection.layer) == (selected.position, selected.layer)  # ablation choice unchanged
    assert selection.actadd_direction is not None and torch.equal(selection.actadd_direction, winner["direction"])
    summary = selection.to_json()["actadd"]
    assert not summary["same_as_ablation"] and summary["layer"] == selection.actadd_layer
    assert len(selection.to_json()["actadd_search"]) == 2


def test_calibration_reuses_the_induce_score_exactly(make_tiny_lm):
    """Calibration's coefficient-1 try is the filters' induce score, not a second forward pass, and equals a fresh one."""
    from refusal_steer.directions.selection import calibrate_actadd

    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL, HARMLESS, progress=False)
    config = SelectionConfig(kl_threshold=1e9, induce_threshold=-1e9, screen_top_k=3, batch_size=4, actadd_coefs=(1.0, 2.0),
                             actadd_candidates=0)
    selection = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, config, progress=False)
    chosen = selection.chosen()
    assert chosen.induce is not None and selection.actadd_calibration[0] == {"coef": 1.0, "induce": chosen.induce}
    _, fresh = calibrate_actadd(lm, diffs.candidate(chosen.position, chosen.layer), chosen.layer, HARMLESS, REFUSAL_IDS, config)
    assert fresh[0]["induce"] == pytest.approx(chosen.induce, abs=1e-5)


def test_kl_filter_is_measured_on_the_harmless_kl_prompts(make_tiny_lm):
    from refusal_steer.interventions import all_layers_ablation

    lm = make_tiny_lm("qwen2")
    diffs = difference_in_means(lm, HARMFUL, HARMLESS, progress=False)
    kl_prompts = ["Name a colour.", "Write a haiku about rain.", "What is 2 + 2?"]
    config = SelectionConfig(kl_threshold=1e9, induce_threshold=-1e9, screen_top_k=0, batch_size=4, cap_candidates=2)
    selection = select_direction(lm, diffs, HARMFUL, HARMLESS, REFUSAL_IDS, config, harmless_kl=kl_prompts, progress=False)
    base = last_token_logprobs(lm, kl_prompts)
    ablated = last_token_logprobs(lm, kl_prompts, [all_layers_ablation(diffs.candidate(selection.position, selection.layer), lm)])
    # The KL filter measured these 3 prompts in two batches (its own order), this re-measurement in one: float32 log-probabilities
    # of a prompt in different batches differ by a few rounding units of the largest |log-probability|, and the KL (a sum of
    # p x log-probability differences, ~1e-3 here) by at most that, so not to a relative 1e-4 on every CPU. 8 float32 eps x
    # max |log-probability| (~6e-6) bounds it on any.
    tol = 8 * torch.finfo(torch.float32).eps * base.abs().max().item()
    assert selection.chosen().kl == pytest.approx(kl_divergence(base, ablated).mean().item(), abs=tol)
    assert selection.to_json()["n_kl_harmless"] == 3
    assert selection.cap is not None and len(selection.cap.table) == 2
