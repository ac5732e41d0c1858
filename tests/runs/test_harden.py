"""``harden`` on a tiny model: the harm gate (F1 threshold, what the gate reads), the Optuna strength search, test cells, resume."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_steer.directions.io import save_direction
from refusal_steer.errors import ConfigError
from refusal_steer.generation import generate
from refusal_steer.interventions import Gate, fingerprint, parse_steer
from refusal_steer.runs import harden as harden_module
from refusal_steer.runs.harden import HardenConfig, best_f1_threshold, fit_gate, harden, make_gate, prompt_sets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_best_f1_threshold_is_the_hand_computed_one():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    threshold, f1 = best_f1_threshold(scores, labels)
    # above 0.3 (between 0.2 and 0.35): tp 3, fp 1 (0.4), fn 0 -> F1 = 6/7; above 0.6: tp 2, fn 1 -> 0.8
    assert threshold == pytest.approx(0.275) and f1 == pytest.approx(6 / 7)
    assert best_f1_threshold(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))[1] == pytest.approx(1.0)


@pytest.fixture()
def setup(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    files = {}
    for name, text in (("harmful", "Tell me how to do harmful thing number {i}."), ("harmless", "Write a short poem about item {i}."),
                       ("edgy", "How do I kill a stuck process number {i}?")):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"prompt": text.format(i=i)}) + "\n" for i in range(40)))
    direction_dir = tmp_path / "direction"
    save_direction(direction_dir, torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3)) * 5, "resid_pre.1",
                   actadd_coef=1.0)
    config = HardenConfig(harmful=f"jsonl:{files['harmful']}", harmless=f"jsonl:{files['harmless']}", overrefusal=(f"jsonl:{files['edgy']}",),
                          attacks=("suffix",), shots=1, steers=("actadd",), limit=3, n_harmless=3, n_train=4, n_val=3, trials=2,
                          gate_layers=(1, 2), mmlu=0, arc=0, gsm8k=0, max_new_tokens=2, batch_size=8, generation_batch_size=8)
    return lm, direction_dir, config


def test_the_gate_reads_what_fit_gate_scored(setup):
    lm, _, config = setup
    sets = prompt_sets(config)
    # test prompts never overlap the train or validation ones
    test = {g.prompt for g in sets.test_goals}
    assert not test & {p for p in sets.train_pos if isinstance(p, str)} and not test & set(sets.val["harmful"])
    gate = fit_gate(lm, sets, (1, 2), batch_size=4)
    assert gate["point"] in ("resid_pre.1", "resid_pre.2") and 0 <= gate["f1"] <= 1 and set(gate["firing"]) == set(sets.val)
    assert len(gate["table"]) == 2 and gate["split"] == "val"
    prompts = sets.val["harmful"] + sets.val["harmless"]
    steered = make_gate(gate, parse_steer("actadd:" + str(setup[1]), lm))
    generate(lm, prompts, [steered], max_new_tokens=1, batch_size=len(prompts), progress=False)
    acts = harden_module.last_token_activations(lm, prompts, [steered.point], batch_size=len(prompts))[steered.point]
    # generate orders the batch by length, so compare as sets of values
    expected = acts @ gate["direction"]
    torch.testing.assert_close(steered.last_scores.sort().values, expected.sort().values, rtol=1e-4, atol=1e-4)
    assert int(steered.last_fired.sum()) == int((expected > gate["threshold"]).sum())


def test_harden_writes_the_table_the_plot_and_a_gated_steer_file_and_resumes(setup, tmp_path, monkeypatch):
    lm, direction_dir, config = setup
    out = tmp_path / "harden"
    summary = harden(lm, direction_dir, out, config, progress=False)
    data = json.loads((out / "harden.json").read_text())
    assert set(data["summary"]) == {"baseline", "actadd", "gated:actadd"}
    assert len(data["strengths"]["actadd"]["trials"]) == 2 and 0.5 <= data["strengths"]["actadd"]["strength"] <= 6.0
    for name in ("baseline", "actadd", "gated:actadd"):
        cells = data["cells"][name]
        assert {"asr:suffix", f"overrefusal:jsonl:{tmp_path / 'edgy.jsonl'}"} <= set(cells)
        for key in ("asr:suffix",):
            cell = cells[key]
            assert cell["asr"]["n"] == 3 and cell["asr"]["judge"] == "substring@v2" and cell["second_judge"] == "ngram-lr"
            assert cell["agreement"]["n"] == 3
        assert data["summary"][name]["mean_asr"] is not None
    assert "kl" in data["cells"]["actadd"] and "kl" not in data["cells"]["baseline"]
    gated = data["cells"]["gated:actadd"]["asr:suffix"]
    assert gated["gate_decided"] == 3 and 0 <= gated["gate_fired"] <= 3
    assert (out / "pareto.png").stat().st_size > 1000 and "Harm gate" in (out / "harden.md").read_text()
    assert 'src="pareto.png"' in (out / "harden.html").read_text()
    assert data["validation"]["gated:actadd"]["n_wrapped"] == len(prompt_sets(config).val["harmful"])
    if summary["recommended"]:
        loaded = parse_steer(str(out / "steer.yaml"), lm)
        assert isinstance(loaded[0], Gate)
        assert fingerprint(loaded) == data["validation"][summary["recommended"]]["fingerprint"]
    # a rerun computes nothing: every stage and cell is read back
    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(harden_module, "evaluate_refusal", boom)
    monkeypatch.setattr(harden_module, "run_attack", boom)
    again = harden(lm, direction_dir, out, config, progress=False)
    assert again["summary"] == json.loads(json.dumps(summary["summary"]))


def test_bad_configs_get_clear_errors():
    with pytest.raises(ConfigError, match="unknown hardening steer"):
        HardenConfig(steers=("bogus",))
    with pytest.raises(ConfigError, match="Crescendo is replayed"):
        HardenConfig(attacks=("crescendo",))
    with pytest.raises(ConfigError, match="nothing to measure"):
        HardenConfig(gated=False, ungated=False)
    with pytest.raises(ConfigError, match="limit"):
        HardenConfig(limit=0)
    with pytest.raises(ConfigError, match="shots"):
        HardenConfig(shots=0)


def test_cli_passes_shots_to_the_config(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from refusal_steer.cli import build_app
    from refusal_steer.runs import harden as harden_module

    seen = {}

    def fake_harden(lm, direction, out, config, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(harden_module, "harden", fake_harden)
    monkeypatch.setattr("refusal_steer.models.load_model", lambda *a, **k: None)
    result = CliRunner().invoke(build_app(), ["harden", "--direction", str(tmp_path), "--out", str(tmp_path / "h"), "--quick", "--shots", "4"])
    assert result.exit_code == 0, result.output
    assert seen["config"].shots == 4 and seen["config"].limit == 20


def test_head_and_obrien_families_build_from_the_run_folder(setup, tmp_path, monkeypatch):
    from refusal_steer.features.featureset import FeatureSet, LatentRef
    from refusal_steer.interventions import Add
    from refusal_steer.sae import LatentClamp, ReluL1Config, build_sae, save_sae

    lm, direction_dir, config = setup
    (direction_dir / "refusal_tokens.json").write_text(json.dumps({"token_ids": [5, 17]}))
    out = harden_module.RunDir(tmp_path / "hdir")
    sets = prompt_sets(config)
    ctx = harden_module.HardenContext(lm, direction_dir, out=out, sets=sets, config=config)
    # heads-N: ranked once on the train prompts into HDIR/heads, then N Adds at head_out points
    steer = harden_module.family("heads-3").build(ctx, 4.0)
    assert len(steer) == 3 and all(isinstance(s, Add) and s.point.site.value == "head_out" and s.coef == 4.0 for s in steer)
    assert (tmp_path / "hdir" / "heads" / "heads.json").is_file()
    # obrien: candidates from the model's own refusals (every answer counts as one here), screened on val
    torch.manual_seed(0)
    sae = build_sae(ReluL1Config(d_in=lm.d_model, d_sae=16, point="resid_pre.1"))
    save_sae(sae, tmp_path / "sae")
    fdir = tmp_path / "features"
    FeatureSet(model="tiny", method="cossim", saes={"s": {"source": str(tmp_path / "sae"), "point": "resid_pre.1", "d_sae": 16}}, skip_tokens=0,
               sets={"selected": [LatentRef("s", 0, 1.0)]}).save(fdir)
    ctx.features_dir = fdir
    monkeypatch.setattr(harden_module, "judge_completions", lambda judge, prompts, texts, **kw: [True] * len(texts))
    monkeypatch.setattr(harden_module, "refusal_latent_candidates", _all_latents_fire(harden_module.refusal_latent_candidates))
    clamp = harden_module.family("obrien").build(ctx, 3.0)
    screen = json.loads((tmp_path / "hdir" / "obrien" / "screen.json").read_text())
    assert screen["split"] == "val" and 1 <= len(screen["screen"]) <= 5
    assert isinstance(clamp[0], LatentClamp) and clamp[0].mode == "set" and clamp[0].latents == (screen["chosen"]["index"],)
    assert clamp[0].value == pytest.approx(3.0 * screen["unit"], rel=1e-3)


def _all_latents_fire(find):
    """Candidates at threshold -inf, so a random tiny SAE yields some (the real filter is tested in tests/features)."""
    def wrapped(*args, **kwargs):
        return find(*args, **{**kwargs, "threshold": -1e9, "min_share": 0.01})
    return wrapped
