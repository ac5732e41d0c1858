"""Bottom-up refusal: the SAE latents that carry it, found by cosine, activation contrast and attribution patching.

- :mod:`.scores`: cosine of decoder rows to the refusal direction, per-prompt max activations, ActDiff;
- :mod:`.attribution`: attribution patching with integrated gradients (Yeo et al. 2025);
- :mod:`.featureset`: ``features.json`` and the ``latents:FDIR`` short form;
- :mod:`.steerers`: Kapros 2025's bottom-up and hybrid steerers (saem3, sae, hybrid, hybrid2);
- :mod:`.hardening`: O'Brien et al. 2024's single-latent candidates, the latents firing on the model's own refusals.
"""

from __future__ import annotations

from .attribution import attribute, attribute_batch
from .featureset import FEATURES_FILENAME, FeatureSet, LatentRef, bypass_steer, clamp_steer, induce_steer, load_feature_saes, load_features
from .hardening import Conversation, LatentCandidate, RefusalLatentScan, conversations_from_completions, refusal_latent_candidates
from .scores import cosine_scores, global_top, max_activation_diff, max_activations, per_sae_top, prompt_activations
from .steerers import hybrid2_steer, hybrid_steer, latent_add_steer, saem3_direction

__all__ = [
    "Conversation",
    "FEATURES_FILENAME",
    "FeatureSet",
    "LatentCandidate",
    "LatentRef",
    "RefusalLatentScan",
    "attribute",
    "attribute_batch",
    "bypass_steer",
    "clamp_steer",
    "conversations_from_completions",
    "cosine_scores",
    "global_top",
    "hybrid2_steer",
    "hybrid_steer",
    "induce_steer",
    "latent_add_steer",
    "load_feature_saes",
    "load_features",
    "max_activation_diff",
    "max_activations",
    "per_sae_top",
    "prompt_activations",
    "refusal_latent_candidates",
    "saem3_direction",
]
