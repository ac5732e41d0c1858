"""Fixtures for the SAE tests: seeded RNGs, one list of architectures, tiny configs, a synthetic sparse dataset."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch

from refusal_steer.sae import registry
from refusal_steer.sae.config import SaeConfig

#: Every registered SAE kind; tests parametrize over this one list.
ALL_ARCHITECTURES = ["relu_l1", "topk", "batchtopk", "jumprelu"]

D_IN, D_SAE, N_ATOMS = 16, 64, 48

#: Per-kind settings that train well on the synthetic data in ~100 steps.
_TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "relu_l1": {"l1_coefficient": 0.5},
    "topk": {"k": 4},
    "batchtopk": {"k": 4, "threshold_momentum": 0.9},
    "jumprelu": {"l0_coefficient": 0.05},
}


@pytest.fixture(autouse=True)
def _seed_sae_tests() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def build_cfg(arch: str, **overrides: Any) -> SaeConfig:
    """A tiny config of ``arch`` (d_in 16, 64 latents) with settings that train on :func:`synthetic`."""
    fields = {"d_in": D_IN, "d_sae": D_SAE, **_TRAINING_DEFAULTS[arch], **overrides}
    return registry.get(arch)[1](**fields)


_ATOMS = None


def atoms() -> torch.Tensor:
    """The fixed ground-truth dictionary of the synthetic data: (48, 16) unit rows."""
    global _ATOMS
    if _ATOMS is None:
        g = torch.Generator().manual_seed(1234)
        d = torch.randn(N_ATOMS, D_IN, generator=g)
        _ATOMS = d / d.norm(dim=1, keepdim=True)
    return _ATOMS


def synthetic(n: int, seed: int = 0, k: int = 3) -> torch.Tensor:
    """``n`` activations, each a positive combination of ``k`` of the 48 atoms, scaled and offset.

    The offset and scale check that normalisation and b_dec are handled inside the SAE.
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, N_ATOMS, generator=g).argsort(dim=1)[:, :k]
    coef = torch.rand(n, k, generator=g) * 2 + 0.5
    return (coef[..., None] * atoms()[idx]).sum(1) * 3.0 + 1.0


@pytest.fixture(params=ALL_ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    """Each SAE kind in turn."""
    return request.param
