"""Difference-in-means candidate directions at every layer and post-instruction position.

Arditi et al. (2024, §2.3): for each layer l and post-instruction position i, the candidate refusal
direction is the mean residual-stream activation (``resid_pre.l``) over harmful instructions minus
the mean over harmless ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_save_safetensors
from ..errors import CorruptFileError, EmptyDatasetError, ShapeMismatchError
from ..batching import record_batch
from ..hooks import HookPoint, Site
from ..generation import encode_prompts, length_order
from ..models import LoadedModel, post_instruction

CANDIDATES_FILENAME = "candidates.safetensors"


@dataclass(frozen=True, eq=False)
class MeanDiffs:
    """Candidate directions ``diffs[p, l]`` = mean harmful - mean harmless at ``resid_pre.l``, position ``positions[p]``.

    Positions are negative offsets from the end of the formatted prompt (``-1`` is the last token).
    """

    diffs: Tensor  # (n_positions, n_layers, d_model), float32
    harmful_mean: Tensor
    harmless_mean: Tensor
    positions: tuple[int, ...]
    n_harmful: int
    n_harmless: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.diffs.shape[1])

    def candidate(self, position: int, layer: int) -> Tensor:
        """The raw (unnormalised) direction at a negative ``position`` and ``layer``."""
        return self.diffs[self.positions.index(position), layer]

    def save(self, path: Path) -> Path:
        meta = {**self.metadata, "positions": ",".join(map(str, self.positions)),
                "n_harmful": str(self.n_harmful), "n_harmless": str(self.n_harmless)}
        tensors = {"diffs": self.diffs.contiguous(), "harmful_mean": self.harmful_mean.contiguous(),
                   "harmless_mean": self.harmless_mean.contiguous()}
        return atomic_save_safetensors(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: Path) -> MeanDiffs:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = dict(handle.metadata() or {})
                tensors = {name: handle.get_tensor(name) for name in ("diffs", "harmful_mean", "harmless_mean")}
        except Exception as exc:
            raise CorruptFileError(f"cannot read candidate directions {path}: {exc}", fix=f"delete {path} and rerun") from exc
        positions = tuple(int(p) for p in meta.pop("positions").split(","))
        return cls(positions=positions, n_harmful=int(meta.pop("n_harmful")), n_harmless=int(meta.pop("n_harmless")),
                   metadata=meta, **tensors)


def mean_activations(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    n_positions: int | None = None,
    batch_size: int = 16,
    system: str | None = None,
    desc: str = "activations",
    progress: bool = True,
) -> tuple[Tensor, tuple[int, ...]]:
    """Mean ``resid_pre`` activation of every layer at the last ``n_positions`` prompt tokens.

    Returns a ``(n_positions, n_layers, d_model)`` float32 tensor and the negative positions. Prompts
    are chat-formatted and left-padded, so the last positions are the post-instruction tokens of every
    prompt; the forward pass stops after the last layer's input (no unembedding).
    """
    if not prompts:
        raise EmptyDatasetError(f"no prompts to compute {desc} on", fix="use a larger dataset or --n-train")
    if n_positions is None:
        n_positions = post_instruction(lm.tokenizer, system=system).n_positions
    positions = tuple(range(-n_positions, 0))
    points = [HookPoint(Site.RESID_PRE, layer) for layer in range(lm.n_layers)]
    encoded = encode_prompts(lm, prompts, system=system)
    order = length_order([len(tokens) for tokens in encoded])
    total = torch.zeros(n_positions, lm.n_layers, lm.d_model, dtype=torch.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        chunk = [encoded[i] for i in order[start : start + batch_size]]
        if min(len(tokens) for tokens in chunk) < n_positions:
            raise ShapeMismatchError(f"prompts are shorter than the {n_positions} post-instruction positions")
        acts = record_batch(lm, chunk, points, keep=n_positions)  # the template prefix is computed once
        stacked = torch.stack([acts[p][:, -n_positions:, :] for p in points], dim=2)  # (batch, pos, layer, d)
        total += stacked.sum(dim=0).to(torch.float64).cpu()
    return (total / len(encoded)).to(torch.float32), positions


def difference_in_means(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    batch_size: int = 16,
    system: str | None = None,
    progress: bool = True,
) -> MeanDiffs:
    """Candidate refusal directions at every layer and post-instruction position (Arditi et al. 2024, §2.3).

    Example:
        >>> diffs = difference_in_means(lm, harmful_train, harmless_train)  # doctest: +SKIP
        >>> diffs.diffs.shape  # (positions, layers, d_model)  # doctest: +SKIP
        torch.Size([5, 24, 896])
    """
    harmful_mean, positions = mean_activations(lm, harmful, batch_size=batch_size, system=system, desc="harmful activations", progress=progress)
    harmless_mean, _ = mean_activations(lm, harmless, batch_size=batch_size, system=system, desc="harmless activations", progress=progress)
    return MeanDiffs(
        diffs=harmful_mean - harmless_mean,
        harmful_mean=harmful_mean,
        harmless_mean=harmless_mean,
        positions=positions,
        n_harmful=len(harmful),
        n_harmless=len(harmless),
        metadata={"model": lm.spec, "model_sha256": lm.source_sha256 or "", "point_site": "resid_pre"},
    )
