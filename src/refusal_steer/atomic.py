"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Each write goes to a unique temporary file in the target's folder, then ``os.replace`` renames it
over the target, which is atomic on POSIX and Windows within one file system. Used for every JSON,
text and safetensors file the package writes that a later stage or run reads back.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor


def _replace_via_temp(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a fresh temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A random name rather than tempfile.mkstemp: mkstemp creates files readable by their owner only,
    # and the renamed file would keep that mode instead of the usual umask-derived one.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically (flushed and fsynced before the rename); return its path."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return _replace_via_temp(path, write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (values JSON cannot encode are written with ``str``)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def atomic_save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` atomically; tensors are moved to the CPU and made contiguous first."""
    from safetensors.torch import save_file

    cpu = {name: value.detach().contiguous().cpu() for name, value in tensors.items()}

    def write(tmp: str) -> None:
        save_file(cpu, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates its files owner-only; give the usual mode

    return _replace_via_temp(path, write)


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
