"""Atomic writes leave the old file or the new one, and no temporary file, even when the write fails."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from refusal_steer.atomic import atomic_save_safetensors, atomic_write_json, atomic_write_text


def test_writes_and_overwrites_creating_folders(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    atomic_write_json(path, {"n": 1})
    atomic_write_json(path, {"n": 2, "p": tmp_path})  # non-JSON values are written with str
    assert json.loads(path.read_text()) == {"n": 2, "p": str(tmp_path)}
    tensors = atomic_save_safetensors({"w": torch.arange(6.0).view(2, 3).t()}, tmp_path / "w.safetensors", metadata={"k": "v"})
    assert torch.equal(load_file(str(tensors))["w"], torch.arange(6.0).view(2, 3).t())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "w.safetensors"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # type: ignore[arg-type]  (fails inside the write)
    with pytest.raises(Exception):
        atomic_save_safetensors({"w": "not a tensor"}, tmp_path / "w.safetensors")  # type: ignore[dict-item]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_files_get_the_usual_permissions(tmp_path):
    """Not the owner-only mode of a mkstemp file: what open() would create under the current umask."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_save_safetensors({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    for name in ("a.txt", "w.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
