"""``refusal-steer sae train / info / eval`` on activation shards."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from refusal_steer.cli import build_app
from refusal_steer.sae.shards import write_shard

from .conftest import synthetic


def test_train_info_eval(tmp_path: Path) -> None:
    acts, held, out = tmp_path / "acts", tmp_path / "held", tmp_path / "sae"
    acts.mkdir(), held.mkdir()
    for i in range(2):
        write_shard(acts / f"shard_{i:03d}.safetensors", synthetic(1024, seed=i))
    write_shard(held / "shard_000.safetensors", synthetic(512, seed=9))
    app = build_app()
    runner = CliRunner()
    r = runner.invoke(app, ["sae", "train", "--activations", str(acts), "--arch", "topk", "--width", "64", "--k", "4", "--tokens", "2048",
                            "--batch-size", "128", "--lr", "0.005", "--point", "resid_pre.2", "--out", str(out), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["steps"] == 16
    r = runner.invoke(app, ["sae", "info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["arch"] == "topk" and info["d_sae"] == 64 and info["point"] == "resid_pre.2" and info["training"]["steps"] == 16
    r = runner.invoke(app, ["sae", "eval", "--sae", str(out), "--activations", str(held), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["n_tokens"] == 512 and m["l0"] <= 4 and m["fvu"] < 1
