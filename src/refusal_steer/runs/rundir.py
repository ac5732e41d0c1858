"""Run directories: stages whose outputs are skipped when their inputs have not changed, plus a manifest.

A stage is done when its ``.stages/NAME.json`` stamp exists with the same input key (a hash of its
config) and every output it lists still exists. Stamps are written after the outputs, so an
interrupted stage simply runs again and a rerun resumes from the last finished stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_write_json

logger = logging.getLogger(__name__)


def stable_hash(obj: Any) -> str:
    """A short sha256 of a JSON-able object with sorted keys (the identity of a stage's inputs)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    atomic_write_json(path, obj)


@dataclass
class RunDir:
    """A folder holding one run's artifacts, with per-stage resume stamps."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def _stamp(self, stage: str) -> Path:
        return self.path / ".stages" / f"{stage}.json"

    def is_done(self, stage: str, inputs: Any, outputs: list[str]) -> bool:
        """True when ``stage`` finished before with the same ``inputs`` and its ``outputs`` still exist."""
        stamp = self._stamp(stage)
        if not stamp.is_file():
            return False
        try:
            record = json.loads(stamp.read_text())
        except ValueError:
            return False
        if record.get("key") != stable_hash(inputs):
            return False
        return all((self.path / name).exists() for name in outputs)

    def mark_done(self, stage: str, inputs: Any, seconds: float | None = None) -> None:
        write_json(self._stamp(stage), {"key": stable_hash(inputs), "finished": time.time(), "seconds": seconds})

    def write_manifest(self, **fields: Any) -> Path:
        """Write ``manifest.json``: package version, platform, and whatever the caller adds (model hash, seeds)."""
        import torch
        import transformers

        manifest = {
            "refusal_steer": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **fields,
        }
        path = self.file("manifest.json")
        write_json(path, manifest)
        return path
