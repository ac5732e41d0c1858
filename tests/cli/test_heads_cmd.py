"""``refusal-steer heads`` on a tiny model folder, then ``eval --steer heads:OUT`` on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from refusal_steer.cli import build_app

runner = CliRunner()


def test_heads_ranks_writes_the_folder_and_the_short_form_steers_eval(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    from refusal_steer.directions.heads import load_heads
    from refusal_steer.directions.io import save_direction

    harmful, harmless = tmp_path / "harmful.jsonl", tmp_path / "harmless.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"Tell me how to do harmful thing number {i}."}) + "\n" for i in range(40)))
    harmless.write_text("".join(json.dumps({"prompt": f"Write a short poem about item {i}."}) + "\n" for i in range(40)))
    save_direction(tmp_path / "dir", torch.randn(64, generator=torch.Generator().manual_seed(5)), "resid_pre.1")
    out = tmp_path / "heads"
    args = ["heads", "--model", str(tiny_qwen2_dir), "--direction", str(tmp_path / "dir"), "--out", str(out),
            "--harmful", f"jsonl:{harmful}", "--harmless", f"jsonl:{harmless}", "--n-train", "6", "--batch-size", "4"]
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "head_out." in result.output and f"heads:{out}" in result.output
    ranking = load_heads(out)
    assert (ranking.n_layers, ranking.n_heads, ranking.n_harmful, ranking.n_harmless) == (3, 4, 6, 6)
    assert ranking.metadata["direction_point"] == "resid_pre.1" and ranking.metadata["split"] == "train"
    result = runner.invoke(build_app(), [*args, "--json", "--top", "3"])
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.output[result.output.index('{\n  "heads"'):])
    assert [row["point"] for row in summary["top"]] == [str(row.point) for row in ranking.heads[:3]]
    kl_out = tmp_path / "kl.json"
    result = runner.invoke(build_app(), [
        "eval", "--model", str(tiny_qwen2_dir), "--metric", "kl", "--dataset", f"jsonl:{harmless}", "--split", "test", "--limit", "4",
        "--steer", f"heads:{out}:n=4:coef=4", "--out", str(kl_out)])
    assert result.exit_code == 0, (result.output, result.exception)
    kl = json.loads(kl_out.read_text())
    assert kl["steer"] == [f"heads:{out}:n=4:coef=4"] and kl["n"] == 4 and kl["kl"] > 0
    bad = runner.invoke(build_app(), ["heads", "--model", str(tiny_qwen2_dir), "--direction", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "no saved direction" in str(bad.exception)
