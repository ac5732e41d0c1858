"""Activation shards on disk: a directory of ``*.safetensors`` files, each holding ``(n, d_in)`` (or
``(batch, seq, d_in)``) activations, read lazily one file at a time.

This is the interim input of ``sae train --activations DIR``; the caching engine
(``refusal_steer.activations``) writes shards and streams from the model directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import CorruptFileError, EmptyDatasetError
from .constants import ACTIVATION_SHARD_GLOB

_INDEX_KEYS = ("prompt_index", "token_index")


class ActivationShards:
    """Re-iterable over the activation tensors of a shard directory (sorted by file name).

    Args:
        directory: folder of ``*.safetensors`` shards.
        key: tensor name inside each shard; None takes the only tensor, or the one named ``point``.
        point: hook point whose tensor to take when shards hold several (e.g. ``resid_pre.12``).

    Example:
        >>> for batch in ActivationShards("acts/"):  # doctest: +SKIP
        ...     print(batch.shape)  # (n, d_in)
    """

    def __init__(self, directory: str | os.PathLike[str], key: str | None = None, point: str | None = None) -> None:
        self.directory = Path(directory)
        self.files = sorted(self.directory.glob(ACTIVATION_SHARD_GLOB))
        if not self.files:
            raise EmptyDatasetError(f"no {ACTIVATION_SHARD_GLOB} shards in {self.directory}", fix="point --activations at a directory of activation shards")
        self.key = key
        self.point = point

    def _pick(self, path: Path, keys: list[str]) -> str:
        for want in (self.key, self.point):
            if want is not None and want in keys:
                return want
        # Shards from refusal_steer.activations also hold per-row prompt_index/token_index.
        candidates = [k for k in keys if k not in _INDEX_KEYS]
        if self.key is None and len(candidates) == 1:
            return candidates[0]
        raise CorruptFileError(f"{path} holds tensors {keys}; cannot tell which are the activations", fix="pass key=... (or --point) naming the tensor")

    def __iter__(self) -> Iterator[Tensor]:
        for path in self.files:
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = list(f.keys())
                    t = f.get_tensor(self._pick(path, keys))
            except (SafetensorError, OSError) as exc:
                raise CorruptFileError(f"{path} is not a readable safetensors shard ({exc})", fix="delete it and re-cache the activations") from exc
            yield t.reshape(-1, t.shape[-1])

    @property
    def n_rows(self) -> int:
        """Activations across all shards (read from the headers, no tensor is loaded)."""
        total = 0
        for path in self.files:
            with safe_open(str(path), framework="pt") as f:
                shape = f.get_slice(self._pick(path, list(f.keys()))).get_shape()
            total += int(torch.Size(shape[:-1]).numel())
        return total

    @property
    def d_in(self) -> int:
        """Width of the stored activations (read from the first shard's header)."""
        with safe_open(str(self.files[0]), framework="pt") as f:
            keys = list(f.keys())
            return int(f.get_slice(self._pick(self.files[0], keys)).get_shape()[-1])


def write_shard(path: str | os.PathLike[str], activations: Tensor, key: str = "activations") -> None:
    """Write one shard (used by tests and small scripts)."""
    from ..atomic import atomic_save_safetensors

    atomic_save_safetensors({key: activations.reshape(-1, activations.shape[-1]).to(torch.float32)}, path)


__all__ = ["ActivationShards", "write_shard"]
