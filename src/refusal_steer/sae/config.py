"""Config dataclasses shared by every SAE kind; each kind subclasses :class:`SaeConfig` in its module.

Every field carries a one-line doc (the string under it); ``__post_init__`` raises
:class:`~refusal_steer.errors.ConfigError` naming the bad field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from ..errors import ConfigError

#: Allowed values of ``SaeConfig.normalize``.
NORMALIZATIONS = ("none", "expected_norm")
#: Allowed values of ``SaeConfig.dtype`` and the torch dtypes they name.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_POINT_RE = re.compile(r"^[a-z_]+\.\d+(\.\d+)?$")

T = TypeVar("T", bound="SaeConfig")


@dataclass
class SaeConfig:
    """What every SAE kind needs: widths, where it reads from, how inputs are normalised.

    Example:
        >>> from refusal_steer.sae.topk import TopKConfig
        >>> TopKConfig(d_in=16, d_sae=64, k=4, point="resid_pre.3").arch
        'topk'
    """

    ARCH: ClassVar[str] = ""

    d_in: int
    """Width of the activations the SAE reads (the model's d_model for residual points)."""
    d_sae: int
    """Number of latents (the dictionary size)."""
    point: str | None = None
    """Hook point the SAE was trained on, e.g. ``resid_pre.12`` (None when unknown)."""
    model: str | None = None
    """Model id or path the activations came from (None when unknown)."""
    model_hash: str | None = None
    """Hash of the model weights/config the activations came from, for mismatch checks."""
    normalize: str = "expected_norm"
    """Input normalisation stored in the SAE: ``expected_norm`` (scale so E||x||^2 = d_in) or ``none``."""
    apply_b_dec_to_input: bool = True
    """Subtract the decoder bias from the input before encoding (SAELens's convention)."""
    dtype: str = "float32"
    """Parameter dtype: float32, bfloat16 or float16 (JumpReLU thresholds stay float32)."""

    @property
    def arch(self) -> str:
        """Registered architecture name of this config's SAE kind."""
        return type(self).ARCH

    def __post_init__(self) -> None:
        _require(isinstance(self.d_in, int) and self.d_in > 0, "d_in", f"must be a positive integer, got {self.d_in!r}")
        _require(isinstance(self.d_sae, int) and self.d_sae > 0, "d_sae", f"must be a positive integer, got {self.d_sae!r}")
        _require(self.normalize in NORMALIZATIONS, "normalize", f"must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        _require(self.dtype in DTYPES, "dtype", f"must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.point is not None:
            _require(bool(_POINT_RE.match(self.point)), "point", f"must look like 'resid_pre.12', got {self.point!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype named by :attr:`dtype`."""
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including the ``arch`` name."""
        return {"arch": self.arch, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Build from :meth:`to_dict` output; unknown keys raise (typos never pass silently)."""
        data = {k: v for k, v in data.items() if k not in ("arch", "format")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)}",
                fix=f"valid fields are {', '.join(sorted(names))}",
            )
        return cls(**data)

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _require(ok: bool, field: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"SAE config field '{field}' {what}", fix=f"fix '{field}' in the config or command line")


__all__ = ["SaeConfig", "NORMALIZATIONS", "DTYPES"]
