"""The direction pipeline and the demo on a tiny model: artifacts, resume, no train/test overlap."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_steer.runs import direction as pipeline_module
from refusal_steer.directions.io import load_direction
from refusal_steer.runs.direction import DirectionConfig, find_direction
from refusal_steer.directions.selection import SelectionConfig
from refusal_steer.interventions import fingerprint
from refusal_steer.interventions import parse_steer as parse_steer_

LOOSE = SelectionConfig(kl_threshold=1e9, induce_threshold=-1e9, screen_top_k=3, batch_size=8, actadd_coefs=(1.0, 2.0))


@pytest.fixture()
def prompt_files(tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    harmless = tmp_path / "harmless.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"Tell me how to do harmful thing number {i}."}) + "\n" for i in range(40)))
    harmless.write_text("".join(json.dumps({"prompt": f"Write a short poem about item {i}."}) + "\n" for i in range(40)))
    return f"jsonl:{harmful}", f"jsonl:{harmless}"


def test_find_direction_writes_artifacts_and_resumes(make_tiny_lm, prompt_files, tmp_path, monkeypatch):
    lm = make_tiny_lm("qwen2")
    config = DirectionConfig(harmful=prompt_files[0], harmless=prompt_files[1], n_train=8, n_val=4,
                             refusal_token_ids=(5, 17), selection=LOOSE)
    out = tmp_path / "direction"
    result = find_direction(lm, config, out, progress=False)
    for name in ("prompts.json", "candidates.safetensors", "refusal_tokens.json", "selection.json", "selection_heatmap.png",
                 "direction.safetensors", "actadd.safetensors", "cap.safetensors", "optimization.json", "manifest.json"):
        assert (out / name).is_file(), name
    cap = result.selection["cap"]  # KL threshold 1e9: the lowest capped bypass among the scored candidates wins
    assert cap["point"] is not None and len(cap["table"]) == 3
    assert min(cap["table"], key=lambda row: row["bypass"])["status"] == "selected"
    (capped,) = parse_steer_(f"cap:{out}", lm)
    assert len(capped.points) == lm.n_layers and capped.kind == "cap"
    saved = load_direction(out)
    assert str(saved.point) == result.selection["point"]
    from refusal_steer.interventions import parse_steer

    (added,) = parse_steer(f"actadd:{out}", lm)
    assert added.coef == result.selection["actadd_coef"] and str(added.point) == result.selection["actadd"]["point"]
    assert added.positions == result.selection["actadd"]["positions"] == "prompt"
    assert (out / "actadd.safetensors").is_file()
    prompts = json.loads((out / "prompts.json").read_text())
    assert not set(prompts["harmful_train"]) & set(prompts["harmful_val"])

    def boom(*args, **kwargs):
        raise AssertionError("finished stage ran again")

    optimization = result.selection["optimization"]
    assert [c["step"] for c in optimization["checkpoints"]] == [0, 5, 10] and optimization["n_targets"] >= 1
    _check_refined_files(lm, out, optimization, saved)
    monkeypatch.setattr(pipeline_module, "difference_in_means", boom)
    monkeypatch.setattr(pipeline_module, "select_direction", boom)
    monkeypatch.setattr(pipeline_module, "optimize_direction", boom)
    again = find_direction(lm, config, out, progress=False)
    assert again.selection == result.selection


def _check_refined_files(lm, out, optimization, saved):
    """A later kept step writes optimized.safetensors, which ablate:DIR applies; step 0 kept writes none (ablate:DIR = the selected one)."""
    (by_folder,) = parse_steer_(f"ablate:{out}", lm)
    (selected,) = parse_steer_(f"ablate:{out / 'direction.safetensors'}", lm)
    torch.testing.assert_close(selected.direction, saved.direction / saved.direction.norm())
    if optimization["step"] == 0:
        assert not (out / "optimized.safetensors").exists()
        assert torch.equal(by_folder.direction, selected.direction)
        return
    (refined,) = parse_steer_(f"ablate:{out / 'optimized.safetensors'}", lm)
    torch.testing.assert_close(by_folder.direction, refined.direction)
    kept = load_direction(out / "optimized.safetensors")
    assert kept.metadata["optimized_step"] == str(optimization["step"]) and str(kept.point) == str(saved.point)
    assert refined.kind == "ablate" and len(refined.points) == 3 * lm.n_layers
    assert kept.direction.norm().item() == pytest.approx(saved.direction.norm().item(), rel=1e-5)  # scaled like the selected one


def _keep_step_five(monkeypatch):
    """Make the refinement report step 5 kept (a perturbed direction), whatever the tiny random model's checkpoints say."""
    from dataclasses import replace

    real = pipeline_module.optimize_direction

    def later(*args, **kwargs):
        found = real(*args, **kwargs)
        changed = torch.nn.functional.normalize(found.direction + 0.1 * torch.randn_like(found.direction), dim=0)
        return replace(found, direction=changed, step=5)

    monkeypatch.setattr(pipeline_module, "optimize_direction", later)


def test_a_later_kept_step_writes_the_refined_file(make_tiny_lm, prompt_files, tmp_path, monkeypatch):
    """Both branches of the refinement's file are exercised: here the refinement keeps step 5."""
    lm = make_tiny_lm("qwen2")
    _keep_step_five(monkeypatch)
    config = DirectionConfig(harmful=prompt_files[0], harmless=prompt_files[1], n_train=8, n_val=4, refusal_token_ids=(5, 17), selection=LOOSE)
    result = find_direction(lm, config, tmp_path, progress=False)
    assert result.selection["optimization"]["step"] == 5 and (tmp_path / "optimized.safetensors").is_file()
    _check_refined_files(lm, tmp_path, result.selection["optimization"], load_direction(tmp_path))


def test_refinement_is_skipped_with_a_record_when_no_answer_complies(make_tiny_lm, prompt_files, tmp_path, monkeypatch):
    lm = make_tiny_lm("qwen2")
    config = DirectionConfig(harmful=prompt_files[0], harmless=prompt_files[1], n_train=8, n_val=4, refusal_token_ids=(5, 17), selection=LOOSE)
    _keep_step_five(monkeypatch)
    find_direction(lm, config, tmp_path, progress=False)
    assert (tmp_path / "optimized.safetensors").is_file()
    from dataclasses import replace

    monkeypatch.setattr(pipeline_module, "compliance_targets", lambda *a, **k: {})
    result = find_direction(lm, replace(config, optimize=replace(config.optimize, lr=0.02)), tmp_path, progress=False)
    assert "no compliant answer" in result.selection["optimization"]["skipped"]
    assert not (tmp_path / "optimized.safetensors").exists()  # none left from the earlier run
    (ablation,) = parse_steer_(f"ablate:{tmp_path}", lm)  # no refined direction: the selected one
    selected = load_direction(tmp_path).direction
    torch.testing.assert_close(ablation.direction, selected / selected.norm())


def test_changed_inputs_rerun_the_stage(make_tiny_lm, prompt_files, tmp_path):
    lm = make_tiny_lm("qwen2")
    base = dict(harmful=prompt_files[0], harmless=prompt_files[1], n_val=4, refusal_token_ids=(5,), selection=LOOSE)
    find_direction(lm, DirectionConfig(n_train=6, **base), tmp_path, progress=False)
    prompts_before = json.loads((tmp_path / "prompts.json").read_text())
    find_direction(lm, DirectionConfig(n_train=8, **base), tmp_path, progress=False)
    prompts_after = json.loads((tmp_path / "prompts.json").read_text())
    assert len(prompts_before["harmful_train"]) == 6 and len(prompts_after["harmful_train"]) == 8


def test_demo_end_to_end_on_tiny_model(make_tiny_lm, prompt_files, tmp_path):
    from refusal_steer.demo import DemoConfig, run_demo

    lm = make_tiny_lm("llama")
    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    config = DemoConfig(model=str(model_dir), harmful=prompt_files[0], harmless=prompt_files[1], n_train=6, n_val=3, n_eval=4,
                        max_new_tokens=3, batch_size=4, screen_top_k=2, refusal_token_ids=(5, 17), cap_candidates=8, optimize_steps=2,
                        optimize_n_kl=5)
    # The real filters would reject every candidate of a random model; relax them through the config path.
    import refusal_steer.demo as demo_module

    from refusal_steer.directions.optimize import OptimizeConfig

    original, original_optimize = demo_module.SelectionConfig, demo_module.OptimizeConfig
    demo_module.SelectionConfig = lambda **kw: SelectionConfig(**{**kw, "kl_threshold": 1e9, "induce_threshold": -1e9, "actadd_coefs": (1.0,)})
    demo_module.OptimizeConfig = lambda **kw: OptimizeConfig(**{**kw, "kl_threshold": 1e9})
    try:
        report = run_demo(tmp_path / "run", config, progress=False)
    finally:
        demo_module.SelectionConfig, demo_module.OptimizeConfig = original, original_optimize
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The refined direction is a condition of its own unless the refinement kept the selected direction (step 0).
    refined = ("optimized",) if metrics["optimization"]["step"] else ()
    for name in ("baseline_harmful", "ablation_harmful", "cap_harmful", "cap_harmless", "actadd_harmless",
                 *(f"{r}_{d}" for r in refined for d in ("harmful", "harmless"))):
        result = metrics["results"][name]
        assert result["n"] == 4 and 0 <= result["ci95"][0] <= result["refusal_rate"] <= result["ci95"][1] <= 1
    for name in ("ablation", "cap", *refined):
        assert metrics["results"][f"kl_{name}_harmless"]["n"] == 4
    assert ("optimized_harmful" in metrics["results"]) == bool(refined) and ("kl_optimized_harmless" in metrics["results"]) == bool(refined)
    direction_dir = tmp_path / "run" / "direction"
    selection = json.loads((direction_dir / "selection.json").read_text())
    optimization = json.loads((direction_dir / "optimization.json").read_text())
    # The refined steer is optional in the demo's run config: evaluated exactly when the refinement wrote its file (step != 0).
    assert (direction_dir / "optimized.safetensors").is_file() == bool(refined)
    assert ("optimized" in metrics["skipped_steers"]) == (not refined)
    assert metrics["results"]["ablation_harmful"]["record"]["steer"] == fingerprint(
        parse_steer_(f"ablate:{direction_dir / 'direction.safetensors'}", lm))
    assert metrics["optimization"]["config"]["steps"] == 2 and len(json.loads((tmp_path / "run" / "direction" / "prompts.json").read_text())["harmless_kl_optimize"]) == 5
    assert metrics["direction"]["cap"]["point"] is not None
    # Harmful and harmless prompts of one condition are generated together, then split back in order.
    from refusal_steer.data import load_dataset
    from refusal_steer.evaluation.refusal import evaluate_refusal
    from refusal_steer.interventions import parse_steer
    from refusal_steer.models import load_model

    assert metrics["results"]["ablation_harmful"]["generated_with"] == ["ablation_harmful", "ablation_harmless"]
    reloaded = load_model(str(model_dir))
    for dataset, source in (("harmful", prompt_files[0]), ("harmless", prompt_files[1])):
        rows = [json.loads(line) for line in (tmp_path / "run" / "completions" / f"ablation_{dataset}.jsonl").read_text().splitlines()]
        expected = [r.prompt for r in load_dataset(source, split="test", limit=4, seed=0)]
        assert [row["prompt"] for row in rows] == expected
        alone = evaluate_refusal(reloaded, expected, parse_steer(f"ablate:{tmp_path / 'run' / 'direction' / 'direction.safetensors'}", reloaded),
                                 max_new_tokens=3, batch_size=8, progress=False)
        assert [row["text"] for row in rows] == [c.text for c in alone.completions]
        assert metrics["results"][f"ablation_{dataset}"]["k"] == alone.rate.k
    text = report.read_text()
    assert "95% CI" in text and "selection heatmap" in text and "capped ablation" in text and "Refined direction" in text
    assert ("stand for it" in text) == (not refined)
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "refusal_rates.png").is_file()


def test_actadd_dir_reads_the_separately_chosen_direction(make_tiny_lm, prompt_files, tmp_path, monkeypatch):
    """When selection adds another candidate than it ablates, ablate:DIR and actadd:DIR each get theirs."""
    import torch

    import refusal_steer.directions.selection as selection_module
    from refusal_steer.interventions import parse_steer

    lm = make_tiny_lm("qwen2")
    calls = []

    def fake_calibrate(lm_, direction, layer, *args, **kwargs):
        calls.append(layer)
        return 3.0, [{"coef": 3.0, "induce": 1.0 if len(calls) == 2 else -1.0}]  # only the first alternative passes

    monkeypatch.setattr(selection_module, "calibrate_actadd", fake_calibrate)
    from dataclasses import replace

    config = DirectionConfig(harmful=prompt_files[0], harmless=prompt_files[1], n_train=8, n_val=4, refusal_token_ids=(5, 17),
                             selection=replace(LOOSE, actadd_candidates=2))
    result = find_direction(lm, config, tmp_path, progress=False)
    actadd = result.selection["actadd"]
    assert not actadd["same_as_ablation"] and actadd["coef"] == 3.0
    (ablation,) = parse_steer(f"ablate:{tmp_path}/direction.safetensors", lm)
    (added,) = parse_steer(f"actadd:{tmp_path}", lm)
    assert str(added.point) == actadd["point"] and added.coef == 3.0
    assert not torch.allclose(added.vector / added.vector.norm(), ablation.direction)
    assert torch.allclose(ablation.direction, load_direction(tmp_path).direction / load_direction(tmp_path).direction.norm())


def test_no_cap_file_when_no_candidate_passes_the_kl_filter(make_tiny_lm, prompt_files, tmp_path):
    """A KL budget nothing meets under capping: no cap.safetensors (and none left from an earlier run), and cap:DIR says why."""
    from dataclasses import replace

    from refusal_steer.errors import ConfigError

    lm = make_tiny_lm("qwen2")
    base = dict(harmful=prompt_files[0], harmless=prompt_files[1], n_train=8, n_val=4, refusal_token_ids=(5, 17))
    find_direction(lm, DirectionConfig(**base, selection=LOOSE), tmp_path, progress=False)
    assert (tmp_path / "cap.safetensors").is_file()
    # Ablation keeps its relaxed filter through a monkeypatch-free route: only capping sees a tiny threshold.
    import refusal_steer.directions.selection as selection_module

    from refusal_steer.directions.scores import KlFilter

    original = selection_module.select_cap

    def strict_cap(lm_, diffs, candidates, harmful_val, kl_filter, *rest, **kw):
        strict = KlFilter(lm_, kl_filter.prompts, kl_filter.base_logprobs, -1.0, batch_size=kl_filter.batch_size)
        return original(lm_, diffs, candidates, harmful_val, strict, *rest, **kw)

    selection_module.select_cap = strict_cap
    try:
        result = find_direction(lm, DirectionConfig(**base, selection=replace(LOOSE, cap_candidates=2)), tmp_path, progress=False)
    finally:
        selection_module.select_cap = original
    cap = result.selection["cap"]
    assert cap["point"] is None and [row["status"] for row in cap["table"]] == ["filtered: kl"] * 2
    assert not (tmp_path / "cap.safetensors").exists()
    with pytest.raises(ConfigError, match="no capped ablation"):
        parse_steer_(f"cap:{tmp_path}", lm)
