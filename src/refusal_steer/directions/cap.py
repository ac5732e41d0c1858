"""Capped ablation of a refusal direction: its ceilings, its selection and its file (``DIR/cap.safetensors``).

Directional ablation zeroes the projection on the refusal direction for every token, and on small
models the candidates that remove most refusal also move harmless next-token distributions by more
than the KL budget (docs/results.md). Capping (:class:`~refusal_steer.interventions.ProjectionCap`) lowers the
projection at ``resid_pre`` of every layer only where it exceeds the *ceiling* of that layer, the mean
projection of the harmless training prompts at their post-instruction positions, so tokens already at
a harmless level stay as they are. Selection scores the lowest-bypass candidates under capping on the
same validation prompts and with the same KL filter as ablation, and picks the lowest capped bypass.

File format (version 1): tensors ``direction`` ``(d_model,)`` (raw) and ``ceilings`` ``(n_layers,)``;
metadata ``format`` = ``"refusal-steer/cap"``, ``version``, ``point``, ``layer``, ``position`` and
provenance strings. Only safetensors is read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_save_safetensors
from ..errors import ConfigError, ShapeMismatchError
from ..hooks import HookPoint, Site
from ..interventions import PositionSpec, ProjectionCap
from ..models import LoadedModel
from .diff_in_means import MeanDiffs
from .io import read_tensors, saved_file
from .scores import KlFilter, last_token_logprobs, refusal_log_odds

logger = logging.getLogger(__name__)

CAP_FILENAME = "cap.safetensors"
LEGACY_CAP_FILENAME = "clamp.safetensors"
"""What direction folders written before the rename to "cap" hold; still read."""
CAP_FORMAT = "refusal-steer/cap"


def cap_ceilings(diffs: MeanDiffs, direction: Tensor) -> Tensor:
    """Per-layer ceilings ``(n_layers,)``: the harmless training prompts' mean projection on the unit ``direction``.

    The mean is over the post-instruction positions the candidates were fitted at, where the model
    decides whether to refuse; a harmless prompt sits near it, a harmful one well above it.
    """
    unit = direction.to(torch.float32) / direction.norm().clamp_min(1e-12)
    return (diffs.harmless_mean.to(torch.float32) @ unit).mean(dim=0)


def cap_points(n_layers: int) -> tuple[HookPoint, ...]:
    """Where capping applies: the input of every block (``resid_pre.0`` ... ``resid_pre.{n-1}``)."""
    return tuple(HookPoint(Site.RESID_PRE, layer) for layer in range(n_layers))


def candidate_cap(diffs: MeanDiffs, position: int, layer: int) -> ProjectionCap:
    """The capped ablation of one candidate: its direction, capped at its ceilings at ``resid_pre`` of every layer."""
    direction = diffs.candidate(position, layer)
    return ProjectionCap(direction, cap_points(diffs.n_layers), ceilings=tuple(cap_ceilings(diffs, direction).tolist()))


def cap_summary(cap: dict | None) -> dict:
    """A ``selection.json`` ``cap`` entry without its score table: the choice itself (what a resume stamp depends on)."""
    return {k: v for k, v in (cap or {}).items() if k != "table"}


@dataclass(frozen=True, eq=False)
class SavedCap:
    """A capped ablation read from disk: the raw direction, the ceiling of each layer, and metadata."""

    direction: Tensor
    ceilings: Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    def intervention(self, positions: PositionSpec = "all") -> ProjectionCap:
        """The :class:`ProjectionCap` at ``resid_pre`` of every layer with these ceilings."""
        return ProjectionCap(self.direction, cap_points(len(self.ceilings)), ceilings=tuple(self.ceilings.tolist()), positions=positions)


def save_cap(path: str | Path, direction: Tensor, ceilings: Tensor, point: HookPoint, **metadata: object) -> Path:
    """Write ``DIR/cap.safetensors`` (or the named file); return it."""
    file = saved_file(path, CAP_FILENAME)
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update(format=CAP_FORMAT, version="1", point=str(point), layer=str(point.layer), d_model=str(direction.shape[-1]))
    tensors = {"direction": direction.detach().to("cpu", torch.float32), "ceilings": ceilings.detach().to("cpu", torch.float32)}
    return atomic_save_safetensors(tensors, file, metadata=meta)


def load_cap(path: str | Path) -> SavedCap:
    """Read a capped ablation from ``DIR`` (written by ``refusal-steer direction``) or a ``.safetensors`` file.

    Example:
        >>> cap = load_cap("runs/demo/direction").intervention()  # doctest: +SKIP
    """
    file = saved_file(path, CAP_FILENAME)
    if not file.is_file() and saved_file(path, LEGACY_CAP_FILENAME).is_file():
        file = saved_file(path, LEGACY_CAP_FILENAME)
    if not file.is_file():
        raise ConfigError(f"no capped ablation at {file}",
                          fix="rerun `refusal-steer direction` (it writes cap.safetensors unless --cap-candidates 0)")
    tensors, metadata = read_tensors(file, ("direction", "ceilings"), fix="rerun `refusal-steer direction`")
    direction, ceilings = tensors["direction"], tensors["ceilings"]
    if direction.dim() != 1 or ceilings.dim() != 1:
        raise ShapeMismatchError(f"{file}: direction {tuple(direction.shape)} and ceilings {tuple(ceilings.shape)} must be vectors")
    return SavedCap(direction=direction.to(torch.float32), ceilings=ceilings.to(torch.float32), metadata=metadata)


@dataclass
class CapChoice:
    """The capped-ablation selection: the chosen candidate (None if none passed the KL filter) and every row scored."""

    position: int | None
    layer: int | None
    table: list[dict]
    kl_threshold: float

    def to_json(self) -> dict:
        point = None if self.layer is None else f"resid_pre.{self.layer}"
        return {"point": point, "position": self.position, "layer": self.layer, "kl_threshold": self.kl_threshold,
                "sites": "resid_pre of every layer", "ceiling": "mean harmless projection (train, post-instruction positions)",
                "table": self.table}


def select_cap(
    lm: LoadedModel,
    diffs: MeanDiffs,
    candidates: Sequence[tuple[int, int]],
    harmful_val: Sequence[str],
    kl_filter: KlFilter,
    refusal_token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    system: str | None = None,
    progress: bool = True,
) -> CapChoice:
    """Among ``candidates`` ((position, layer) pairs), the lowest bypass score under capping with KL below the threshold.

    The bypass score of every candidate is computed; KL (by ``kl_filter``, selection's filter on the harmless
    KL prompts and its threshold) lazily in ascending bypass order until one passes, each stopped early once
    it is proven >= the threshold (``kl_n`` < the prompts: ``kl`` is then a lower bound).
    """
    rows: list[dict] = []
    for position, layer in tqdm(candidates, desc="capped bypass scores", unit="candidate", disable=not progress):
        logprobs = last_token_logprobs(lm, harmful_val, [candidate_cap(diffs, position, layer)], batch_size=batch_size, system=system)
        rows.append({"position": position, "layer": layer, "bypass": refusal_log_odds(logprobs, refusal_token_ids).mean().item(),
                     "kl": None, "kl_n": None, "status": "not evaluated"})
    chosen: dict | None = None
    for row in sorted(rows, key=lambda r: r["bypass"]):
        check = kl_filter([candidate_cap(diffs, row["position"], row["layer"])])
        row["kl"], row["kl_n"] = check.kl, check.n_measured
        logger.info("capped ablation pos %d layer %d: bypass %.3f kl %.4f", row["position"], row["layer"], row["bypass"], row["kl"])
        if kl_filter.passes(check):
            row["status"] = "selected"
            chosen = row
            break
        row["status"] = "filtered: kl"
    if chosen is None:
        logger.warning("no candidate passed the KL filter under capped ablation either")
    return CapChoice(position=None if chosen is None else chosen["position"], layer=None if chosen is None else chosen["layer"],
                       table=rows, kl_threshold=kl_filter.threshold)
