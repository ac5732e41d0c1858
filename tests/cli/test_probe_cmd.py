"""``refusal-steer probe`` on a tiny model saved to disk: the summary table, the files, and its input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refusal_steer.cli import build_app
from refusal_steer.cli.probe_cmd import parse_layers
from refusal_steer.errors import ConfigError
from refusal_steer.models import load_model
from tests.runs.test_probes import write_probe_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def test_probe_command_prints_the_table_and_writes_the_files(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    lm = load_model(str(tiny_qwen2_dir))
    paths = write_probe_inputs(tmp_path, lm, results_model=None)
    out = tmp_path / "pdir"
    args = ["probe", "--model", str(tiny_qwen2_dir), "--features", str(paths["features"]), "--transcripts", str(paths["transcripts"]),
            "--out", str(out), "--layers", "0,2", "--n-train", "8", "--n-test", "4", "--harmful", f"jsonl:{paths['harmful']}",
            "--harmless", f"jsonl:{paths['harmless']}", "--batch-size", "4"]
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "refusal probes" in result.output and "random_latents" in result.output and "relative drop" in result.output
    data = json.loads((out / "probes.json").read_text())
    assert [(p["kind"], p["layer"]) for p in data["probes"]] == [("dense", 0), ("dense", 2), ("latents", None), ("random_latents", None)]
    assert (out / "mechanism.json").is_file() and (out / "probes_ood_accuracy.png").is_file()
    assert data["model_check"]["checked"].startswith("none")

    missing = runner.invoke(build_app(), [*args[:6], str(tmp_path / "nothing.jsonl"), *args[7:]])
    assert missing.exit_code != 0 and isinstance(missing.exception, ConfigError) and "--transcripts" in str(missing.exception)


def test_parse_layers() -> None:
    assert parse_layers("0,4,8-10") == (0, 4, 8, 9, 10) and parse_layers("all") is None and parse_layers(None) is None
    with pytest.raises(ConfigError, match="layers"):
        parse_layers("a-b")
