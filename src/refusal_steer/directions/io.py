"""The saved-direction format: ``DIR/direction.safetensors`` (what ``ablate:DIR`` reads) and
``DIR/actadd.safetensors`` (what ``actadd:DIR`` reads when present: the direction activation addition
uses, with its calibrated ``actadd_coef`` and the ``actadd_positions`` it is added at; see
:func:`actadd_intervention`).

Format (version 1):

- one tensor named ``direction``, shape ``(d_model,)``: the *raw* direction, e.g. the
  difference-in-means vector of Arditi et al. (2024, §2.3), not normalised, so activation addition
  adds it with its natural norm; ablation normalises it itself.
- safetensors metadata (all strings): ``format`` = ``"refusal-steer/direction"``, ``version`` = ``"1"``,
  ``point`` (the hook point it was computed at, e.g. ``"resid_pre.12"``), ``layer`` (its layer, an
  integer), and optional entries such as ``position`` (e.g. ``"-1"``), ``model`` (the model spec),
  ``model_sha256``, ``d_model``, ``created_by``; unknown keys are kept in :attr:`SavedDirection.metadata`.

Never pickle: only safetensors are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_save_safetensors
from ..errors import ConfigError, CorruptFileError, ShapeMismatchError
from ..hooks import HookPoint
from ..interventions.add import Add
from ..interventions.positions import PositionSpec

DIRECTION_FILENAME = "direction.safetensors"
ACTADD_FILENAME = "actadd.safetensors"
OPTIMIZED_FILENAME = "optimized.safetensors"
"""The selected direction refined by :mod:`refusal_steer.directions.optimize`: what ``ablate:DIR`` applies when present."""
DIRECTION_TENSOR = "direction"
DIRECTION_FORMAT = "refusal-steer/direction"


@dataclass(frozen=True, eq=False)
class SavedDirection:
    """A direction loaded from disk: the raw vector, the point it belongs to, and its metadata."""

    direction: Tensor
    point: HookPoint
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def layer(self) -> int:
        return self.point.layer


def saved_file(path: str | Path, filename: str = DIRECTION_FILENAME) -> Path:
    """``path`` itself if it names a ``.safetensors`` file, else ``path/filename`` (a direction folder)."""
    path = Path(path).expanduser()
    return path if path.suffix == ".safetensors" else path / filename


def read_tensors(file: Path, names: tuple[str, ...], *, fix: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The named tensors and the metadata of a safetensors file (never pickle).

    Raises:
        CorruptFileError: a named tensor is missing, or the file is truncated or not safetensors; ``fix`` says what to do.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            missing = sorted(set(names) - set(handle.keys()))
            if missing:
                raise CorruptFileError(f"{file} lacks tensor(s) {missing}", fix=fix)
            tensors = {name: handle.get_tensor(name) for name in names}
    except CorruptFileError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"cannot read {file}: {exc}", fix=f"{fix}; the file is truncated or not safetensors") from exc
    return tensors, metadata


def load_direction(path: str | Path) -> SavedDirection:
    """Load a saved direction from ``DIR`` (or ``DIR/direction.safetensors`` directly).

    Args:
        path: a directory holding ``direction.safetensors``, or that file.

    Returns:
        A :class:`SavedDirection` with the float32 vector and its hook point.

    Raises:
        ConfigError: the file does not exist.
        CorruptFileError: the file cannot be read or lacks the ``direction`` tensor / ``point`` metadata.

    Example:
        >>> saved = load_direction("runs/qwen/direction")  # doctest: +SKIP
        >>> saved.point, saved.direction.shape  # doctest: +SKIP
        (HookPoint(site=<Site.RESID_PRE: 'resid_pre'>, layer=12, head=None), torch.Size([896]))
    """
    file = saved_file(path)
    if not file.is_file():
        raise ConfigError(f"no saved direction at {file}", fix="point at a directory written by the directions stage (it holds direction.safetensors)")
    tensors, metadata = read_tensors(file, (DIRECTION_TENSOR,), fix="re-save the direction")
    direction = tensors[DIRECTION_TENSOR]
    if direction.dim() != 1:
        raise ShapeMismatchError(f"{file}: direction has shape {tuple(direction.shape)}, expected (d_model,)")
    if "point" in metadata:
        point = HookPoint.parse(metadata["point"])
    elif "layer" in metadata:
        point = HookPoint.parse(f"resid_pre.{int(metadata['layer'])}")
    else:
        raise CorruptFileError(f"{file} metadata names no 'point' or 'layer'", fix="re-save the direction with its hook point")
    return SavedDirection(direction=direction.to(torch.float32), point=point, metadata=metadata)


def load_actadd_direction(path: str | Path) -> SavedDirection:
    """The direction to *add* from ``DIR``: ``DIR/actadd.safetensors`` if the selection wrote one, else ``DIR/direction.safetensors``.

    Selection may pick a different candidate for activation addition than for ablation (see
    :mod:`.selection`); a file path is read as given.
    """
    folder = Path(path).expanduser()
    if folder.suffix != ".safetensors" and (folder / ACTADD_FILENAME).is_file():
        return load_direction(folder / ACTADD_FILENAME)
    return load_direction(folder)


def load_ablation_direction(path: str | Path) -> SavedDirection:
    """The direction ``ablate:DIR`` and ``orthogonalize --direction DIR`` use: the pipeline's best ablation.

    That is ``DIR/optimized.safetensors`` (the refined direction) when the folder has one, else
    ``DIR/direction.safetensors`` (the selected difference-in-means direction, Arditi et al.); like
    ``actadd:DIR`` reading ``actadd.safetensors``. A ``.safetensors`` path is used as given, so
    ``ablate:DIR/direction.safetensors`` always applies the selected direction.
    """
    folder = Path(path).expanduser()
    if folder.suffix != ".safetensors" and (folder / OPTIMIZED_FILENAME).is_file():
        return load_direction(folder / OPTIMIZED_FILENAME)
    return load_direction(folder)


def actadd_intervention(path: str | Path, coef: float | None = None, positions: PositionSpec | None = None) -> Add:
    """The activation addition ``actadd:DIR[:COEF]`` applies: the direction of :func:`load_actadd_direction` at its point.

    ``coef`` defaults to the coefficient calibrated at selection (``actadd_coef``, else 1); the positions
    are the recorded ``actadd_positions`` (``"prompt"`` for directions selected since it was recorded,
    ``"all"`` for older files, which is what they were calibrated and evaluated with).
    """
    saved = load_actadd_direction(path)
    if coef is None:
        coef = float(saved.metadata.get("actadd_coef", 1.0))
    if positions is None:
        positions = saved.metadata.get("actadd_positions", "all")
    return Add(saved.direction, saved.point, coef=coef, positions=positions)


def save_direction(path: str | Path, direction: Tensor, point: HookPoint | str, **metadata: object) -> Path:
    """Write ``direction`` (raw, float32) and its point to ``DIR/direction.safetensors`` (or the ``.safetensors`` file named); return the file."""
    point = HookPoint.parse(point)
    file = saved_file(path)
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update(format=DIRECTION_FORMAT, version="1", point=str(point), layer=str(point.layer), d_model=str(direction.shape[-1]))
    return atomic_save_safetensors({DIRECTION_TENSOR: direction.detach().to("cpu", torch.float32)}, file, metadata=meta)
