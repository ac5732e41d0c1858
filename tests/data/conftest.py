"""Fixtures for the datasets tests: an isolated cache and small user files."""

from __future__ import annotations

from pathlib import Path

import pytest

from refusal_steer.paths import CACHE_ENV, cache_dir
from refusal_steer.pinned import WHEELS_ENV


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a temporary folder; pinned wheels are copied from the real cache (no refetch)."""
    real_wheels = cache_dir("wheels")
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    monkeypatch.setenv(WHEELS_ENV, str(real_wheels))
    return root
