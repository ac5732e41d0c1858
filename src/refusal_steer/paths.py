"""Where refusal-steer keeps its cache (pinned wheels, assembled models, datasets)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "REFUSAL_STEER_CACHE"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the user cache, ``$REFUSAL_STEER_CACHE`` if set."""
    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("refusal-steer")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
