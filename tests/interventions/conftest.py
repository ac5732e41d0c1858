"""Intervention tests run tiny models on one thread (much faster when the shared CPU is busy)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread_here(one_thread):
    """Every intervention test module runs on one thread (the shared fixture in tests/conftest.py)."""
