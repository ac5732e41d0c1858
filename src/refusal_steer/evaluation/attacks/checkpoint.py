"""A goal-by-goal checkpoint for long attacks: finished transcripts are appended as they come, and a rerun skips them.

A many-shot attack with 16 examples sends about 4,500 tokens per goal: 100 goals take over an hour on a 2-core CPU.
Each generation batch's transcripts are appended (and flushed) to ``PATH`` under a key naming everything that
decides the answer (attack, its options, steer fingerprint, judge, answer length), so an interrupted run loses at
most the batch in flight, and a line written under another key is never reused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import CorruptFileError
from .base import Transcript


class GoalCheckpoint:
    """Finished transcripts of one attack run, keyed; ``done()`` reads them back, ``append()`` adds a batch."""

    def __init__(self, path: str | Path, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self._tail_checked = False

    def done(self) -> dict[str, Transcript]:
        """The transcripts already written under this key, by goal id (a torn last line, from a kill, is dropped)."""
        if not self.path.is_file():
            return {}
        out: dict[str, Transcript] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # the run was killed while writing its last line
                raise CorruptFileError(f"{self.path}:{number} is not JSON", fix=f"delete {self.path} to start the attack again") from None
            if row.get("key") == self.key:
                t = Transcript.from_dict(row["transcript"], where=f"{self.path}:{number}")
                out[t.goal_id] = t
        return out

    def append(self, transcripts: Sequence[Transcript]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._tail_checked:  # only a kill before this run can have torn the last line: look once
            self._drop_torn_tail()
            self._tail_checked = True
        with self.path.open("a", encoding="utf-8") as f:
            for t in transcripts:
                f.write(json.dumps({"key": self.key, "transcript": t.to_dict()}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _drop_torn_tail(self) -> None:
        """Cut a last line that a kill left without its newline, so what is appended next starts on a line of its own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)


__all__ = ["GoalCheckpoint"]
