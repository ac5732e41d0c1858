"""The README's library block runs as written, on a tiny model standing in for the default one."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_block() -> str:
    text = README.read_text()
    section = text[text.index("## As a library"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's library section has no python block"
    return match.group(1)


def test_readme_library_block_runs(make_tiny_lm, tmp_path, monkeypatch, capsys):
    import refusal_steer as rs
    from refusal_steer.directions.io import save_direction

    lm = make_tiny_lm("qwen2")
    monkeypatch.setattr(rs, "load_model", lambda spec, **kw: lm)
    monkeypatch.chdir(tmp_path)
    save_direction(tmp_path / "runs/demo/direction", torch.randn(lm.d_model) * 4, "resid_pre.1")
    exec(compile(_library_block(), str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("ablate ") and len(out.splitlines()[0].split()[1]) == 16  # kind and fingerprint
    assert "'metric': 'refusal_rate'" in out and "'n': 2" in out
    assert re.search(rf"torch.Size\(\[1, \d+, {lm.d_model}\]\)", out)


def test_public_names():
    import refusal_steer as rs

    for name in ("load_model", "load_dataset", "difference_in_means", "find_direction", "Ablate", "Add", "ProjectionCap", "Gate",
                 "SetProjection", "SaeSplice", "apply", "record", "generate", "evaluate_refusal", "load_sae", "fingerprint"):
        assert name in rs.__all__ and hasattr(rs, name), name
    assert all(hasattr(rs, name) for name in rs.__all__)
