"""Runs: stages whose outputs are skipped when their inputs are unchanged, the direction pipeline, and YAML runs.

- :mod:`.rundir`: a run folder with per-stage resume stamps and a manifest;
- :mod:`.direction`: find, select and refine a refusal direction as resumable stages (``refusal-steer direction``);
- :mod:`.config` and :mod:`.execute`: ``refusal-steer run CONFIG.yaml`` (direction, SAE training and an
  evaluation matrix of steers x datasets x metrics in one resumable run folder).
"""

from __future__ import annotations

from .rundir import RunDir, stable_hash, write_json

__all__ = ["RunDir", "stable_hash", "write_json"]
