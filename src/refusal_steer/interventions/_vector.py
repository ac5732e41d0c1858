"""Shared helpers: check and store a steering vector once in float32, and cast it once per device/dtype."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeMismatchError
from ..hooks import HookPoint
from ..models.loaded import LoadedModel


def as_vector(value: Tensor | Sequence[float], *, name: str, unit: bool) -> Tensor:
    """A detached 1-D float32 CPU copy of ``value``, unit-normalised when ``unit``."""
    vector = torch.as_tensor(value).detach().to(device="cpu", dtype=torch.float32).clone()
    if vector.dim() != 1:
        raise ShapeMismatchError(f"{name} must be a 1-D vector, got shape {tuple(vector.shape)}", fix="pass a (d_model,) tensor")
    if not torch.isfinite(vector).all():
        raise ConfigError(f"{name} contains NaN or infinite values")
    if unit:
        norm = vector.norm()
        if norm == 0:
            raise ConfigError(f"{name} has zero norm and cannot be normalised", fix="pass a non-zero direction")
        # Already-unit vectors stay bit-identical, so a saved and reloaded intervention is the same.
        if abs(float(norm) - 1.0) > 1e-6:
            vector = vector / norm
    return vector


def check_width(vector: Tensor, points: Iterable[HookPoint], lm: LoadedModel, name: str) -> None:
    """Raise :class:`ShapeMismatchError` when ``vector`` does not have the width of every point."""
    for point in points:
        width = point.width(lm)
        if vector.shape[-1] != width:
            raise ShapeMismatchError(
                f"{name} has width {vector.shape[-1]} but {point} of {lm.spec} has width {width}",
                fix="use a direction computed on this model (d_model) or, for head_out, of width head_dim",
            )


class CastCache:
    """Casts of one vector keyed by (device, dtype), so the hot path never allocates."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def get(self, vector: Tensor, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        cast = self._by_key.get(key)
        if cast is None:
            cast = vector.to(device=like.device, dtype=like.dtype)
            self._by_key[key] = cast
        return cast
