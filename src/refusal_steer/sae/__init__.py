"""Sparse autoencoders: one module per architecture behind one registry, training, metrics and formats.

Example:
    >>> import torch
    >>> from refusal_steer.sae import TopKConfig, build_sae
    >>> sae = build_sae(TopKConfig(d_in=16, d_sae=64, k=4, point="resid_pre.3"))
    >>> sae.encode(torch.randn(3, 16)).shape
    torch.Size([3, 64])
"""

from __future__ import annotations

from . import registry
from .base import Sae, SaeOutput, SaeStepOutput
from .batchtopk import BatchTopKConfig, BatchTopKSae
from .config import SaeConfig
from .io import check_width, detect_format, hook_name_to_point, load_gemma_scope, load_sae, point_to_hook_name, sae_info, save_sae, save_saelens
from .jumprelu import JumpReluConfig, JumpReluSae
from .latent_condition import SaeLatent
from .latent_steers import LatentAdd, LatentClamp, decoder_rows
from .metrics import SaeMetrics, evaluate_sae
from .registry import build as build_sae
from .splice import SaeSplice, sae_content_hash
from .relu_l1 import ReluL1Config, ReluL1Sae
from .topk import TopKConfig, TopKSae
from .training import TrainConfig, TrainResult, train_sae

__all__ = [
    "registry",
    "Sae",
    "SaeSplice",
    "LatentClamp",
    "LatentAdd",
    "SaeLatent",
    "decoder_rows",
    "sae_content_hash",
    "SaeOutput",
    "SaeStepOutput",
    "SaeConfig",
    "build_sae",
    "ReluL1Config",
    "ReluL1Sae",
    "TopKConfig",
    "TopKSae",
    "BatchTopKConfig",
    "BatchTopKSae",
    "JumpReluConfig",
    "JumpReluSae",
    "save_sae",
    "load_sae",
    "save_saelens",
    "load_gemma_scope",
    "detect_format",
    "check_width",
    "sae_info",
    "point_to_hook_name",
    "hook_name_to_point",
    "SaeMetrics",
    "evaluate_sae",
    "TrainConfig",
    "TrainResult",
    "train_sae",
]
