"""``refusal-steer generate`` / ``cache`` on a tiny model saved to disk (no hub)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from refusal_steer.activations import load_activations
from refusal_steer.cli import build_app
from refusal_steer.directions.io import save_direction


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    path = tmp_path_factory.mktemp("tiny-qwen2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def test_generate_cli_with_steer_writes_jsonl(model_dir, tmp_path):
    save_direction(tmp_path / "dir", torch.randn(64), "resid_pre.1")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(model_dir), "--prompt", "Hi", "--prompt", "How do I bake bread?",
            "--steer", f"actadd:{tmp_path / 'dir'}:2", "--max-new-tokens", "4", "--out", str(out), "--json"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Hi", "How do I bake bread?"]
    assert all(1 <= r["n_new_tokens"] <= 4 and r["steer"] == [f"actadd:{tmp_path / 'dir'}:2"] for r in rows)


def test_cache_cli_from_jsonl(model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Hi", "Tell me a joke", "Bake bread"]))
    args = ["cache", "--model", str(model_dir), "--dataset", f"jsonl:{data}", "--points", "resid_pre.1,mlp_out.0",
            "--positions", "mean", "--out", str(tmp_path / "acts")]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert load_activations(tmp_path / "acts", "mlp_out.0").shape == (3, 64)


def test_generate_cli_needs_one_prompt_source(model_dir):
    from refusal_steer.errors import ConfigError

    result = CliRunner().invoke(build_app(), ["generate", "--model", str(model_dir)])
    assert isinstance(result.exception, ConfigError)
