"""Run configs: the shipped demo configs are the demo, a typo is an error, and `refusal-steer run` executes a matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refusal_steer.demo import DemoConfig, demo_run_config
from refusal_steer.errors import ConfigError
from refusal_steer.runs.config import RunConfig, dump_run_config, from_mapping, load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name,config", [("demo.yaml", DemoConfig()), ("demo-quick.yaml", DemoConfig.quick())])
def test_shipped_configs_are_the_demo(name, config):
    assert load_run_config(CONFIGS / name) == demo_run_config(config)


def test_round_trip_and_typos(tmp_path):
    config = demo_run_config(DemoConfig.quick())
    path = tmp_path / "run.yaml"
    path.write_text(dump_run_config(config))
    assert load_run_config(path) == config
    text = path.read_text()
    for typo, message in [("n_train:", "unknown key(s) ['n_trian']"), ("judge: substring\n  max_new", "unknown key(s)")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace("n_train:", "n_trian:", 1) if typo == "n_train:" else text.replace("  judge: substring\n  max_new", "  judgee: substring\n  max_new"))
        with pytest.raises(ConfigError, match=r"unknown key"):
            load_run_config(bad)
    with pytest.raises(ConfigError, match=r"direction.n_train must be an integer"):
        from_mapping(RunConfig, {"direction": {"n_train": "many"}}, where="x")
    with pytest.raises(ConfigError, match="metric 'mmul' is unknown"):
        from_mapping(RunConfig, {"evaluate": {"steers": {"b": "none"}, "datasets": {"h": {"name": "harmless"}},
                                              "metrics": [{"metric": "mmul", "datasets": ["h"]}]}}, where="x")
    with pytest.raises(ConfigError, match=r"names \['nope'\]"):
        from_mapping(RunConfig, {"evaluate": {"steers": {"b": "none"}, "datasets": {"h": {"name": "harmless"}},
                                              "metrics": [{"metric": "refusal", "datasets": ["nope"]}]}}, where="x")


def test_run_executes_a_matrix_and_resumes(make_tiny_lm, tmp_path, monkeypatch):
    """A matrix of a steer file and the baseline on a user dataset: results carry records, a rerun computes nothing."""
    import torch

    from refusal_steer.interventions import Add, fingerprint, save_steer_file
    from refusal_steer.runs import execute as execute_module
    from refusal_steer.runs.execute import execute_run

    lm = make_tiny_lm("qwen2")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Write a line about item {i}."}) + "\n" for i in range(30)))
    steer = [Add(torch.randn(lm.d_model) * 5, "resid_pre.1", coef=1.0)]
    save_steer_file(tmp_path / "steer.yaml", steer)
    (tmp_path / "run.yaml").write_text(f"""
evaluate:
  steers:
    baseline: none
    pushed: {tmp_path / 'steer.yaml'}
    missing: {{steer: "ablate:{{run}}/nowhere", optional: true}}
  datasets:
    items: {{name: "jsonl:{data}", split: test, limit: 4}}
  metrics:
    - {{metric: refusal, datasets: [items]}}
    - {{metric: kl, datasets: [items]}}
  max_new_tokens: 3
""")
    config = load_run_config(tmp_path / "run.yaml")
    said: list[str] = []
    execute_run(config, tmp_path / "out", progress=False, announce=said.append, lm=lm)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["results"]) == {"baseline_items", "pushed_items", "kl_pushed_items"}
    assert "missing" in metrics["skipped_steers"]
    record = metrics["results"]["pushed_items"]["record"]
    assert record["steer"] == fingerprint(steer) and record["n"] == 4 and record["split"] == "test" and record["judge"].startswith("substring@")
    assert metrics["results"]["baseline_items"]["record"]["steer"] == fingerprint([])
    assert metrics["results"]["kl_pushed_items"]["record"]["metric"] == "kl"
    assert said[0].startswith("5 stages") and any("stage 2/5: refusal under pushed" in s for s in said)

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(execute_module, "evaluate_refusal", boom)
    monkeypatch.setattr(execute_module, "evaluate_kl", boom)
    execute_run(config, tmp_path / "out", progress=False, lm=lm)


def test_cli_run_dry_run_lists_stages():
    from typer.testing import CliRunner

    from refusal_steer.cli import build_app

    result = CliRunner().invoke(build_app(), ["run", str(CONFIGS / "demo-quick.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1. direction" in result.output and "report" in result.output
