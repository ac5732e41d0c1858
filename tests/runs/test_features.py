"""``features find`` on a tiny model: features.json, the latents: short form, calibration on val only, resume."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_steer.directions.io import save_direction
from refusal_steer.errors import ConfigError
from refusal_steer.features import load_features
from refusal_steer.interventions import parse_steer
from refusal_steer.runs import features as features_module
from refusal_steer.runs.features import FeaturesConfig, find_features
from refusal_steer.sae import LatentClamp, TopKConfig, build_sae, save_sae


@pytest.fixture()
def setup(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    harmful, harmless = tmp_path / "harmful.jsonl", tmp_path / "harmless.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"Tell me how to do harmful thing number {i}."}) + "\n" for i in range(60)))
    harmless.write_text("".join(json.dumps({"prompt": f"Write a short poem about item {i}."}) + "\n" for i in range(60)))
    direction_dir = tmp_path / "direction"
    save_direction(direction_dir, torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3)), "resid_pre.1")
    (direction_dir / "refusal_tokens.json").write_text(json.dumps({"token_ids": [5, 17]}))
    refs = []
    for layer in (1, 2):
        torch.manual_seed(layer)
        sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=32, k=4, point=f"resid_pre.{layer}"))
        save_sae(sae, tmp_path / f"sae{layer}")
        refs.append(str(tmp_path / f"sae{layer}"))
    config = FeaturesConfig(harmful=f"jsonl:{harmful}", harmless=f"jsonl:{harmless}", n_train=6, n_val=4, ig_steps=2, k=4, k_grid=(2, 4), max_harmless_firing=1.0,
                            scale_grid=(0.0, -1.0), induce_multipliers=(1.0, 2.0), max_new_tokens=3, judge_top=2, batch_size=4, card_tokens=400)
    return lm, direction_dir, refs, config


def test_features_find_writes_sets_and_calibration_and_the_short_form_reads_them(setup, tmp_path):
    lm, direction_dir, refs, config = setup
    out = tmp_path / "features"
    features = find_features(lm, direction_dir, refs, out, config, progress=False)
    data = json.loads((out / "features.json").read_text())
    assert data["method"] == "cossim+attribution" and len(data["global"]) == 4
    assert set(data["sets"]) == {"selected", "cossim", "actdiff", "attribution", "cossim+attribution"}
    assert len(data["per_prompt"]) == 6 and all(len(items) == 4 for items in data["per_prompt"])
    entry = data["global"][0]
    assert {"sae", "point", "index", "score", "method", "cosine", "attribution", "actdiff"} <= set(entry)
    # the cosine pool: every selected latent is among its SAE's top pool_per_sae by cosine
    from safetensors.torch import load_file

    scores = load_file(str(out / "scores.safetensors"))
    for ref in features.ranked():
        pool = torch.topk(scores[f"cosine/{ref.sae}"], config.pool_per_sae).indices.tolist()
        assert ref.index in pool
    bypass, induce = data["calibration"]["bypass"], data["calibration"]["induce"]
    assert bypass["split"] == induce["split"] == "val" and len(bypass["table"]) == 4
    assert sum("judged_refusal" in row for row in bypass["table"]) == 2
    assert bypass["k"] in (2, 4) and bypass["scale"] in (0.0, -1.0)
    # calibration prompts are validation prompts, disjoint from the train prompts the latents were scored on
    prompts = json.loads((out / "prompts.json").read_text())
    assert not set(prompts["train_harmful"]) & set(prompts["val_harmful"])
    # latents:FDIR is the calibrated bypass, one clamp per SAE holding a selected latent
    steer = parse_steer(f"latents:{out}", lm)
    assert all(isinstance(s, LatentClamp) and s.mode == "scale" and s.value == bypass["scale"] for s in steer)
    assert sum(len(s.latents) for s in steer) == bypass["k"]
    induced = parse_steer(f"latents:{out}:induce", lm)
    assert all(s.mode == "set" and s.value == induce["value"] for s in induced) and sum(len(s.latents) for s in induced) == 4
    custom = parse_steer(f"latents:{out}:scale=-2.5:k=1:set=cossim", lm)
    assert len(custom) == 1 and custom[0].value == -2.5 and custom[0].latents == (features.ranked("cossim")[0].index,)
    assert parse_steer(f"latents:{out}:value=3", lm)[0].mode == "set"
    with pytest.raises(ConfigError, match="not both"):
        parse_steer(f"latents:{out}:scale=1:value=2", lm)
    with pytest.raises(ConfigError, match="no latent set"):
        parse_steer(f"latents:{out}:set=bogus", lm)
    with pytest.raises(ConfigError, match="no features file"):
        parse_steer(f"latents:{tmp_path / 'nowhere'}", lm)
    assert load_features(out).ranked()[0] == features.ranked()[0]
    # feature cards: one per selected latent, with held-out contexts, logit lens and the clamp-alone effect
    cards = json.loads((out / "cards.json").read_text())["cards"]
    assert [(c["sae"], c["index"]) for c in cards] == [(r.sae, r.index) for r in features.ranked()]
    for card in cards:
        assert len(card["logit_top"]) == len(card["logit_bottom"]) == 10 and card["n_tokens"] > 0
        assert 0.0 <= card["firing_frequency"] <= 1.0 and set(card["clamp_alone"]) >= {"baseline_log_odds", "log_odds"}
        assert all("token" in ctx and ctx["activation"] > 0 for ctx in card["contexts"])
    assert any(card["contexts"] for card in cards)
    assert "<h3>" in (out / "cards.html").read_text()


def test_features_find_resumes_without_recomputing(setup, tmp_path, monkeypatch):
    lm, direction_dir, refs, config = setup
    out = tmp_path / "features"
    first = find_features(lm, direction_dir, refs, out, config, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(features_module, "attribute", fail)
    monkeypatch.setattr(features_module, "_calibrate_bypass", fail)
    again = find_features(lm, direction_dir, refs, out, config, progress=False)
    assert again.to_json()["global"] == first.to_json()["global"]
    assert again.calibration == first.calibration


def test_bad_method_and_missing_refusal_tokens_are_clear(setup, tmp_path):
    lm, direction_dir, refs, config = setup
    with pytest.raises(ConfigError, match="unknown method"):
        FeaturesConfig(method="magic")
    (direction_dir / "refusal_tokens.json").unlink()
    with pytest.raises(ConfigError, match="refusal_tokens.json"):
        find_features(lm, direction_dir, refs, tmp_path / "f", config, progress=False)


def test_compare_runs_every_steerer_on_test_prompts_and_resumes(setup, tmp_path, monkeypatch):
    from refusal_steer.runs import compare as compare_module
    from refusal_steer.runs.compare import CompareConfig, compare_steerers

    lm, direction_dir, refs, config = setup
    fdir = tmp_path / "features"
    find_features(lm, direction_dir, refs, fdir, config, progress=False)
    from refusal_steer.directions.io import save_direction

    save_direction(direction_dir / "actadd.safetensors", torch.randn(lm.d_model), "resid_pre.1", actadd_coef=2.0)
    cconfig = CompareConfig(harmful=config.harmful, harmless=config.harmless, limit=5, max_new_tokens=3, latent_coefs=(-1.0, -2.0))
    result = compare_steerers(lm, direction_dir, fdir, tmp_path / "cmp", cconfig, progress=False)
    names = {(c["steerer"], c["class"]) for c in result["cells"]}
    for name in ("baseline", "topdown", "saem3", "sae", "hybrid", "hybrid2", "latents", "latents-cossim", "latents-actdiff", "latents-attribution"):
        assert (name, "harmful") in names and (name, "harmless") in names, name
    assert ("latents-induce", "harmless") in names and ("actadd", "harmless") in names
    per_prompt = next(c for c in result["cells"] if c["steerer"] == "latents-per-prompt")
    assert per_prompt["class"] == "harmful" and per_prompt["in_sample"] and len(per_prompt["sets"]) == 5
    assert all(0 < len(s) <= 4 for s in per_prompt["sets"]) and per_prompt["refusal"]["steer"].startswith("per-prompt:")
    assert "(in-sample sets)" in (tmp_path / "cmp" / "compare.md").read_text()
    assert "harmful, ngram-lr (agreement)" in (tmp_path / "cmp" / "compare.md").read_text()
    for cell in result["cells"]:
        assert cell["refusal"]["n"] == 5 and cell["refusal"]["split"] == "test" and cell["refusal"]["judge"].startswith("substring")
        if cell["class"] == "harmless" and cell["steerer"] != "baseline":
            assert cell["kl"]["metric"] == "kl"
        two = cell["second"]  # the second judge on the same answers, with its agreement
        assert two["second_judge"] == "ngram-lr" and two["second"]["n"] == 5 and two["agreement"]["n"] == 5
    fingerprints = {c["steerer"]: c["refusal"]["steer"] for c in result["cells"] if c["class"] == "harmful"}
    assert len(set(fingerprints.values())) == len(fingerprints)  # every steerer is a different steer
    assert "kapros_ranking_holds" in result["verdict"]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0 and "Kapros" in (tmp_path / "cmp" / "compare.md").read_text()

    monkeypatch.setattr(compare_module, "evaluate_refusal", lambda *a, **k: (_ for _ in ()).throw(AssertionError("cell re-run")))
    monkeypatch.setattr(compare_module, "evaluate_refusal_per_prompt", lambda *a, **k: (_ for _ in ()).throw(AssertionError("cell re-run")))
    again = compare_steerers(lm, direction_dir, fdir, tmp_path / "cmp", cconfig, progress=False)
    assert again["cells"] == result["cells"]
    # other test prompts of the same count (another dataset into the same CDIR) are measured, not read from the cache
    real_test_prompts = compare_module._test_prompts
    monkeypatch.setattr(compare_module, "_test_prompts", lambda c, used: {k: [p + " Please." for p in v] for k, v in real_test_prompts(c, used).items()})
    with pytest.raises(AssertionError, match="cell re-run"):
        compare_steerers(lm, direction_dir, fdir, tmp_path / "cmp", cconfig, progress=False)
    monkeypatch.setattr(compare_module, "_test_prompts", real_test_prompts)
    # a coefficient chosen for another latent (an older features file) is not reused: it is chosen again
    coef_file = tmp_path / "cmp" / "latent_coef.json"
    stale = json.loads(coef_file.read_text())
    stale["key"]["latent"] = stale["key"]["latent"] + 1
    stale["coef"] = 99.0
    coef_file.write_text(json.dumps(stale))
    monkeypatch.setattr(compare_module, "_calibrate_coef", lambda *a, **k: {"coef": -3.0, "table": [], "split": "val", "kl_max": 0.1})
    with pytest.raises(AssertionError, match="cell re-run"):  # the sae cells' steer changed, so they are measured again
        compare_steerers(lm, direction_dir, fdir, tmp_path / "cmp", cconfig, progress=False)
    assert json.loads(coef_file.read_text())["coef"] == -3.0


def test_upstream_downstream_on_categories(setup, tmp_path):
    from refusal_steer.runs.features import UpstreamConfig, upstream_downstream

    lm, direction_dir, refs, _ = setup
    data = tmp_path / "cats.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Explain how to do {kind} thing {i}.", "semantic_category": kind}) + "\n"
                            for kind in ("cyber", "chemical", "fraud") for i in range(24)))
    config = UpstreamConfig(dataset=f"jsonl:{data}", min_prompts=3, k=6, ig_steps=1, batch_size=4)
    summary = upstream_downstream(lm, direction_dir, refs, tmp_path / "up", config, progress=False)
    assert set(summary["categories"]) == {"cyber", "chemical", "fraud"}
    saved = json.loads((tmp_path / "up" / "upstream.json").read_text())
    assert saved["relative_drop"]["n"] == summary["n_prompts"] > 0
    for cat in saved["categories"].values():
        assert not set(map(tuple, cat["specific"])) & set(map(tuple, saved["common"]))
    with pytest.raises(ConfigError, match="semantic categories"):
        upstream_downstream(lm, direction_dir, refs, tmp_path / "up2", UpstreamConfig(dataset=f"jsonl:{data}", min_prompts=1000), progress=False)


def test_induce_calibration_stops_once_the_smallest_value_reaches_the_target(monkeypatch):
    """Multipliers past the first that reaches 0.9 within the loop limit cannot be chosen, so they are not generated."""
    from types import SimpleNamespace

    from refusal_steer.features import LatentRef

    refs = [LatentRef("s", 0, 1.0), LatentRef("s", 1, 0.5)]
    features = SimpleNamespace(ranked=lambda which, k: refs)
    tensors = {"harmful_max/s": torch.tensor([[2.0, 4.0], [2.0, 4.0]])}
    rates = {3.0: 0.5, 6.0: 0.95, 12.0: 1.0, 24.0: 1.0}
    seen = []

    def fake_eval(lm, prompts, steer, **kwargs):
        seen.append(steer)
        return SimpleNamespace(rate=SimpleNamespace(value=rates[steer], n=8), ci95=(0.0, 1.0), degenerate_rate=SimpleNamespace(value=0.0))

    monkeypatch.setattr(features_module, "clamp_steer", lambda features, latents, mode, value, saes: value)
    monkeypatch.setattr(features_module, "evaluate_refusal", fake_eval)
    config = FeaturesConfig(k=2, k_grid=(2,), induce_multipliers=(1.0, 2.0, 4.0, 8.0))
    out = features_module._calibrate_induce(None, features, {}, ["p"], tensors, config, progress=False)
    assert seen == [3.0, 6.0] and out["value"] == 6.0 and len(out["table"]) == 2
    # unsorted multipliers: a smaller one left to try keeps the search going
    seen.clear()
    config = FeaturesConfig(k=2, k_grid=(2,), induce_multipliers=(2.0, 1.0, 4.0))
    assert features_module._calibrate_induce(None, features, {}, ["p"], tensors, config, progress=False)["value"] == 6.0 and seen == [6.0, 3.0]


def test_selected_set_leaves_out_latents_firing_on_most_harmless_prompts():
    """With max_harmless_firing < 1 the selected set skips latents active on most harmless prompts; the method's own set keeps them."""
    names = ["a"]
    harmless = torch.zeros(4, 6)
    harmless[:, 0] = 1.0  # latent 0 fires on every harmless prompt
    harmless[:1, 1] = 1.0  # latent 1 on a quarter of them
    tensors = {"cosine/a": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), "harmful_max/a": torch.ones(4, 6), "harmless_max/a": harmless,
               "attribution/a": torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]] * 4)}
    sets, per_prompt, _ = features_module._select(tensors, names, FeaturesConfig(k=3, k_grid=(3,), pool_per_sae=4, max_harmless_firing=0.5))
    assert [r.index for r in sets["cossim+attribution"]] == [0, 1, 2]
    assert [r.index for r in sets["selected"]] == [1, 2, 3]  # pool = top-4 cosine, latent 0 filtered out
    assert all(0 not in [r.index for r in p] for p in per_prompt)
    sets, _, _ = features_module._select(tensors, names, FeaturesConfig(k=3, k_grid=(3,), pool_per_sae=4, max_harmless_firing=1.0))
    assert [r.index for r in sets["selected"]] == [0, 1, 2]
    with pytest.raises(ConfigError, match="max_harmless_firing"):
        FeaturesConfig(max_harmless_firing=0.0)


def test_scores_stage_is_not_redone_when_only_selection_or_calibration_settings_change():
    assert "max_harmless_firing" not in features_module.SCORE_FIELDS and "induce_multipliers" not in features_module.SCORE_FIELDS
    assert set(features_module.SCORE_FIELDS) <= set(FeaturesConfig.__dataclass_fields__)
