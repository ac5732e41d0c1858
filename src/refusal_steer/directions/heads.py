"""Attention heads that write the refusal direction, and the head steer built from them.

O'Brien et al. (2024) steer refusal at a chosen number of attention heads; Inference-Time Intervention
(Li et al. 2023, §3) picks heads and shifts each chosen head's output along its own steering direction.
This module does both halves on any supported model:

- :func:`rank_heads` scores every head ``(layer, head)`` by how much more it writes the refusal direction
  on harmful than on harmless prompts: the head's write into the residual stream along the unit refusal
  direction r̂, ``(W_O[:, head] @ z_h) . r̂``, at the last prompt token (where Arditi et al. 2024 read the
  direction), mean over harmful minus mean over harmless prompts. ``z_h`` is the head's output before the
  output projection, the ``head_out.L.H`` hook point. It also records ITI's steering vector in head space,
  ``theta_h = mean(z_h | harmful) - mean(z_h | harmless)``, and ``sigma_h``, the standard deviation of the
  projections of ``z_h`` on the unit ``theta_h`` over all the prompts (Li et al.'s "mass mean shift").
- :func:`head_steer` turns the top ``n`` heads into one :class:`~refusal_steer.interventions.Add` each,
  adding ``coef * sigma_h * theta_h / |theta_h|`` at ``head_out.L.H``. A list of ``add`` entries is an
  ordinary steer, so it saves to a steer file and has a stable fingerprint with nothing new in the steer
  language; the ``heads:HEADSDIR`` short form (:mod:`.steers`) builds it from a saved ranking.

The ranking is saved as ``HEADSDIR/heads.json`` (the model's shape, the prompts' counts, the direction's
source and the ranked table, for reading) plus ``HEADSDIR/heads.safetensors`` (the grids ``score``,
``harmful``, ``harmless``, ``sigma`` of shape ``(n_layers, n_heads)`` and ``theta`` of shape
``(n_layers, n_heads, head_dim)``, float32). The tensors are the source of truth; the table is derived.

Grouped-query attention changes nothing here: keys and values are shared between heads, but every
query head has its own output ``z_h`` and its own columns of ``W_O``. For Gemma 2/3, whose attention
branch is normalised after ``o_proj``, the score is the write before that norm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_save_safetensors, atomic_write_json
from ..batching import record_batch
from ..errors import ConfigError, CorruptFileError, EmptyDatasetError, ShapeMismatchError
from ..generation import encode_prompts, length_order
from ..hooks import HookPoint, Site
from ..interventions.add import Add
from ..interventions.positions import PositionSpec
from ..models.loaded import LoadedModel
from .io import read_tensors

HEADS_JSON = "heads.json"
HEADS_TENSORS = "heads.safetensors"
HEADS_FORMAT = "refusal-steer/heads"
HEADS_VERSION = 1
DEFAULT_N = 32
"""Heads the ``heads:`` short form steers unless ``n=`` is given (all of them on a model with fewer)."""
DEFAULT_COEF = 15.0
"""The ``heads:`` short form's coefficient unless ``coef=`` is given: Li et al. (2023)'s alpha for LLaMA-7B, not tuned here."""
_GRIDS = ("score", "harmful", "harmless", "sigma")


@dataclass(frozen=True)
class HeadScore:
    """One head's row of the ranking.

    Attributes:
        layer, head: where the head is (``head_out.LAYER.HEAD``).
        score: mean over harmful minus mean over harmless prompts of the head's write along r̂.
        harmful, harmless: the two means (model units).
        sigma: std of the projections of the head's output on its unit steering direction (ITI's sigma).
        theta_norm: the norm of ITI's steering vector theta (harmful mean minus harmless mean of the output).
    """

    layer: int
    head: int
    score: float
    harmful: float
    harmless: float
    sigma: float
    theta_norm: float

    @property
    def point(self) -> HookPoint:
        return HookPoint(Site.HEAD_OUT, self.layer, self.head)


@dataclass(frozen=True, eq=False)
class HeadRanking:
    """Every head of a model ranked by its refusal write (descending), with ITI's vectors; see the module docstring."""

    score: Tensor  # (n_layers, n_heads) float32
    harmful: Tensor  # (n_layers, n_heads)
    harmless: Tensor  # (n_layers, n_heads)
    sigma: Tensor  # (n_layers, n_heads)
    theta: Tensor  # (n_layers, n_heads, head_dim)
    d_model: int
    n_harmful: int
    n_harmless: int
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        grid = tuple(self.theta.shape[:2])
        if self.theta.dim() != 3 or any(tuple(getattr(self, name).shape) != grid for name in _GRIDS):
            raise ShapeMismatchError(f"head ranking grids disagree: theta {tuple(self.theta.shape)}, "
                                     + ", ".join(f"{name} {tuple(getattr(self, name).shape)}" for name in _GRIDS))

    @property
    def n_layers(self) -> int:
        return int(self.theta.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.theta.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.theta.shape[2])

    @cached_property
    def heads(self) -> tuple[HeadScore, ...]:
        """Every head, highest score first (ties by layer, then head); computed once from the grids."""
        norms = self.theta.norm(dim=-1)
        rows = [HeadScore(layer, head, float(self.score[layer, head]), float(self.harmful[layer, head]), float(self.harmless[layer, head]),
                          float(self.sigma[layer, head]), float(norms[layer, head]))
                for layer in range(self.n_layers) for head in range(self.n_heads)]
        return tuple(sorted(rows, key=lambda r: (-r.score, r.layer, r.head)))

    def top(self, n: int) -> tuple[HeadScore, ...]:
        """The ``n`` best heads; ``n`` outside ``1..n_layers * n_heads`` is a :class:`ConfigError`."""
        total = self.n_layers * self.n_heads
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
            raise ConfigError(f"heads: n must be an integer from 1 to {total} (this model's heads), got {n!r}",
                              fix=f"give n between 1 and {total}, e.g. n={min(DEFAULT_N, total)}")
        return self.heads[:n]

    def steering_vector(self, layer: int, head: int) -> Tensor:
        """ITI's shift for one head, ``sigma * theta / |theta|`` (``(head_dim,)`` float32; zero where theta is zero)."""
        theta = self.theta[layer, head].float()
        norm = theta.norm()
        if float(norm) == 0.0:
            return torch.zeros_like(theta)
        return theta / norm * self.sigma[layer, head].float()

    def check_model(self, lm: LoadedModel, where: str = "this head ranking") -> None:
        """Raise :class:`ConfigError` when ``lm``'s layers, heads, head width or residual width differ from the ranked model's."""
        ours = (self.n_layers, self.n_heads, self.head_dim, self.d_model)
        theirs = (lm.n_layers, lm.n_heads, lm.head_dim, lm.d_model)
        if ours != theirs:
            raise ConfigError(
                f"{where} was ranked on a model with {ours[0]} layers x {ours[1]} heads (head_dim {ours[2]}, d_model {ours[3]}); "
                f"{lm.spec} has {theirs[0]} x {theirs[1]} (head_dim {theirs[2]}, d_model {theirs[3]})",
                fix=f"rank the heads on this model: refusal-steer heads --model {lm.spec} --direction DIR --out HEADSDIR")

    def to_json(self) -> dict[str, Any]:
        """What ``heads.json`` holds: the shape, the counts, the metadata and the ranked table."""
        return {"format": HEADS_FORMAT, "version": HEADS_VERSION, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "head_dim": self.head_dim, "d_model": self.d_model, "n_harmful": self.n_harmful, "n_harmless": self.n_harmless,
                "metadata": self.metadata,
                "heads": [{"rank": rank, "point": str(row.point), "layer": row.layer, "head": row.head, "score": row.score,
                           "harmful": row.harmful, "harmless": row.harmless, "sigma": row.sigma, "theta_norm": row.theta_norm}
                          for rank, row in enumerate(self.heads, 1)]}

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/heads.safetensors`` then ``folder/heads.json`` (atomically each); return the folder."""
        folder = Path(folder).expanduser()
        tensors = {name: getattr(self, name).detach().to("cpu", torch.float32).contiguous() for name in (*_GRIDS, "theta")}
        atomic_save_safetensors(tensors, folder / HEADS_TENSORS, metadata={"format": HEADS_FORMAT, "version": str(HEADS_VERSION)})
        atomic_write_json(folder / HEADS_JSON, self.to_json())
        return folder


def load_heads(folder: str | Path, lm: LoadedModel | None = None) -> HeadRanking:
    """Read a ranking written by :meth:`HeadRanking.save` (``HEADSDIR`` or its ``heads.json``), checked against ``lm`` when given.

    Raises:
        ConfigError: nothing is saved there, or ``lm`` has another number of layers, heads or head width.
        CorruptFileError: a file cannot be parsed, or the JSON and the tensors disagree.
    """
    path = Path(folder).expanduser()
    if path.name == HEADS_JSON:
        path = path.parent
    json_path, tensors_path = path / HEADS_JSON, path / HEADS_TENSORS
    if not json_path.is_file() or not tensors_path.is_file():
        raise ConfigError(f"no head ranking at {path} (it needs {HEADS_JSON} and {HEADS_TENSORS})",
                          fix="write one with: refusal-steer heads --model M --direction DIR --out HEADSDIR")
    try:
        data = json.loads(json_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{json_path} is not valid JSON: {exc}", fix="rerun refusal-steer heads") from exc
    if not isinstance(data, dict) or data.get("format") != HEADS_FORMAT:
        raise CorruptFileError(f"{json_path} is not a refusal-steer head ranking", fix="point at a folder written by 'refusal-steer heads'")
    if data.get("version") != HEADS_VERSION:
        raise CorruptFileError(f"{json_path} has version {data.get('version')!r}; this refusal-steer reads version {HEADS_VERSION}",
                               fix="rerun refusal-steer heads with this version")
    tensors, _ = read_tensors(tensors_path, (*_GRIDS, "theta"), fix="rerun refusal-steer heads")
    try:
        shape = (int(data["n_layers"]), int(data["n_heads"]), int(data["head_dim"]))
        ranking = HeadRanking(**{name: tensors[name].float() for name in (*_GRIDS, "theta")}, d_model=int(data["d_model"]),
                              n_harmful=int(data["n_harmful"]), n_harmless=int(data["n_harmless"]),
                              metadata={str(k): str(v) for k, v in dict(data.get("metadata", {})).items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{json_path} is malformed: {exc!r}", fix="rerun refusal-steer heads") from exc
    if (ranking.n_layers, ranking.n_heads, ranking.head_dim) != shape:
        raise CorruptFileError(f"{json_path} says {shape[0]} layers x {shape[1]} heads x {shape[2]} but {tensors_path} holds "
                               f"{tuple(ranking.theta.shape)}", fix="rerun refusal-steer heads; the two files come from different runs")
    if lm is not None:
        ranking.check_model(lm, where=str(path))
    return ranking


def head_write_vectors(lm: LoadedModel, direction: Tensor) -> Tensor:
    """``u[l, h] = W_O[:, head h]^T r̂`` for every layer: a head's write along r̂ is ``z_h . u[l, h]`` (``(n_layers, n_heads, head_dim)`` float64).

    ``W_O`` is the output projection the ``head_out`` hook sits in front of (``adapter.attn_o_proj``);
    GPT-2's ``Conv1D`` stores it transposed. Its bias is the same for every prompt and is left out.
    """
    unit = direction.detach().to("cpu", torch.float64)
    unit = unit / unit.norm()
    out = torch.empty(lm.n_layers, lm.n_heads, lm.head_dim, dtype=torch.float64)
    for layer in range(lm.n_layers):
        weight = lm.block_module(layer, lm.adapter.attn_o_proj).weight.detach().to("cpu", torch.float64)
        per_input = weight @ unit if lm.adapter.conv1d_weights else weight.T @ unit  # (n_heads * head_dim,)
        out[layer] = per_input.view(lm.n_heads, lm.head_dim)
    return out


def head_outputs(lm: LoadedModel, prompts: Sequence[str], *, batch_size: int = 16, system: str | None = None,
                 desc: str = "head outputs", progress: bool = True) -> Tensor:
    """Every head's output ``z_h`` at each prompt's last token: ``(n_prompts, n_layers, n_heads, head_dim)`` float32, in prompt order."""
    if not prompts:
        raise EmptyDatasetError(f"no prompts to compute {desc} on", fix="use a larger dataset or --n-train")
    points = [HookPoint(Site.HEAD_OUT, layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    encoded = encode_prompts(lm, prompts, system=system)
    order = length_order([len(tokens) for tokens in encoded])
    out = torch.empty(len(prompts), lm.n_layers, lm.n_heads, lm.head_dim, dtype=torch.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        rows = order[start:start + batch_size]
        acts = record_batch(lm, [encoded[i] for i in rows], points, keep=1)
        last = torch.stack([acts[p][:, -1, :] for p in points], dim=1).float().cpu()  # (batch, layers * heads, head_dim)
        out[rows] = last.view(len(rows), lm.n_layers, lm.n_heads, lm.head_dim)
    return out


def rank_heads(lm: LoadedModel, direction: Tensor, harmful_prompts: Sequence[str], harmless_prompts: Sequence[str], *,
               batch_size: int = 16, system: str | None = None, progress: bool = True,
               metadata: Mapping[str, object] | None = None) -> HeadRanking:
    """Rank every attention head by its write along the refusal direction, harmful minus harmless, with ITI's vectors.

    Args:
        lm: the model.
        direction: the refusal direction, ``(d_model,)`` (any norm; it is normalised).
        harmful_prompts, harmless_prompts: train prompts (keep them apart from evaluation prompts).
        batch_size: prompts per forward pass.
        system: the system prompt the prompts are formatted with.
        progress: show progress bars.
        metadata: extra strings recorded in ``heads.json`` (e.g. the direction's folder).

    Returns:
        A :class:`HeadRanking`; ``ranking.heads`` lists every head, highest score first.

    Example:
        >>> ranking = rank_heads(lm, load_direction("runs/dir").direction, harmful, harmless)  # doctest: +SKIP
        >>> steer = head_steer(ranking, 16, coef=4.0)  # doctest: +SKIP
    """
    direction = torch.as_tensor(direction).detach().float()
    if direction.shape != (lm.d_model,):
        raise ShapeMismatchError(f"the refusal direction has shape {tuple(direction.shape)}, this model's residual stream is {lm.d_model} wide",
                                 fix="use a direction computed on this model (refusal-steer direction --model ...)")
    if float(direction.norm()) == 0.0 or not torch.isfinite(direction).all():
        raise ConfigError("the refusal direction is zero or not finite", fix="use a direction written by refusal-steer direction")
    harmful_z = head_outputs(lm, harmful_prompts, batch_size=batch_size, system=system, desc="harmful head outputs", progress=progress)
    harmless_z = head_outputs(lm, harmless_prompts, batch_size=batch_size, system=system, desc="harmless head outputs", progress=progress)
    write = head_write_vectors(lm, direction)  # (layers, heads, head_dim) float64
    harmful_write = torch.einsum("nlhd,lhd->nlh", harmful_z.double(), write).mean(0)
    harmless_write = torch.einsum("nlhd,lhd->nlh", harmless_z.double(), write).mean(0)
    theta = harmful_z.double().mean(0) - harmless_z.double().mean(0)  # (layers, heads, head_dim)
    unit_theta = theta / theta.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    projections = torch.einsum("nlhd,lhd->nlh", torch.cat([harmful_z, harmless_z]).double(), unit_theta)
    sigma = projections.std(dim=0)
    meta = {"model": lm.spec, "model_sha256": lm.source_sha256 or "", "position": "-1", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    return HeadRanking(score=(harmful_write - harmless_write).float(), harmful=harmful_write.float(), harmless=harmless_write.float(),
                       sigma=sigma.float(), theta=theta.float(), d_model=lm.d_model, n_harmful=len(harmful_prompts),
                       n_harmless=len(harmless_prompts), metadata=meta)


def head_steer(ranking: HeadRanking, n: int, coef: float, *, positions: PositionSpec = "all") -> list[Add]:
    """One :class:`Add` per top-``n`` head: ``coef * sigma_h * theta_h / |theta_h|`` at ``head_out.L.H`` (Li et al. 2023, §3).

    A positive ``coef`` moves each head's output towards its harmful-prompt mean (more refusal); a
    negative one away from it. The list is an ordinary steer: it saves to a steer file and fingerprints
    like any other (``heads:HEADSDIR:n=N:coef=C`` builds the same list).

    Example:
        >>> with apply(lm, head_steer(load_heads("runs/heads", lm), 16, coef=4.0)):  # doctest: +SKIP
        ...     completions = generate(lm, prompts)
    """
    return [Add(ranking.steering_vector(row.layer, row.head), row.point, coef=coef, positions=positions) for row in ranking.top(n)]


__all__ = ["DEFAULT_COEF", "DEFAULT_N", "HEADS_JSON", "HEADS_TENSORS", "HeadRanking", "HeadScore", "head_outputs", "head_steer",
           "head_write_vectors", "load_heads", "rank_heads"]
