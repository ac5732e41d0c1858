"""Train an SAE on the model's own token mix as a run stage (what ``refusal-steer sae train --model`` does).

The train split of the chat + harmful + harmless mix (:mod:`refusal_steer.sae.corpus`) is cached at the
SAE's point into ``OUT/activations`` (resumable shards; the forward pass stops after the hooked layer),
then the SAE trains over it, replaying the cache as often as the token budget needs; checkpoints let a
rerun resume either part.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..activations import cache_token_activations
from ..models import LoadedModel
from ..sae import build_sae, registry, train_sae
from ..sae import corpus
from ..sae.shards import ActivationShards
from ..sae.training import TrainResult


def cache_mix(lm: LoadedModel, points: list[str], out: Path, n_tokens: int, seed: int, *, progress: bool = True) -> Path:
    """Cache the train split of the SAE token mix at ``points`` into ``out`` (resumes an unfinished cache)."""
    sequences, skip = corpus.mix_token_lists(lm, n_tokens, split="train", seed=seed)
    # Small shards: an interrupted cache loses at most ~256 sequences of work.
    cache_token_activations(lm, sequences, [p.strip() for p in points], out, skip_tokens=skip, shard_size=256, source="sae-mix:train",
                            progress=progress)
    return out


def epochs(shards: ActivationShards, tokens: int) -> Any:
    """A source that replays the shards as many times as the token budget needs."""
    repeats = max(1, math.ceil(tokens / max(shards.n_rows, 1)))
    return lambda: itertools.chain.from_iterable(iter(shards) for _ in range(repeats))


def build_for(arch: str, d_in: int, width: int, point: str | None, model: str | None, *, k: int = 32, l1_coefficient: float = 5.0,
              l0_coefficient: float = 1.0, init_l0: float | None = None) -> Any:
    """A fresh SAE of ``arch`` with the fields that architecture takes."""
    fields: dict[str, Any] = {"d_in": d_in, "d_sae": width, "point": point, "model": model}
    if arch in ("topk", "batchtopk"):
        fields["k"] = k
    elif arch == "relu_l1":
        fields["l1_coefficient"] = l1_coefficient
    elif arch == "jumprelu":
        fields["l0_coefficient"] = l0_coefficient
        if init_l0 is not None:
            fields["init_l0"] = init_l0
    return build_sae(registry.get(arch)[1](**fields))


def train_sae_stage(lm: LoadedModel, stage: Any, out: Path, *, progress: bool = True) -> TrainResult:
    """Cache the mix and train the SAE a :class:`~refusal_steer.runs.config.SaeStage` describes into ``out``."""
    out = Path(out)
    cfg = replace(stage.train, progress=progress and stage.train.progress)
    activations = cache_mix(lm, [stage.point], out / "activations", stage.cache_tokens or cfg.tokens, cfg.seed, progress=progress)
    shards = ActivationShards(activations, point=stage.point)
    sae = build_for(stage.arch, shards.d_in, stage.width, stage.point, lm.spec, k=stage.k, l1_coefficient=stage.l1_coefficient,
                    l0_coefficient=stage.l0_coefficient).to(lm.device)
    return train_sae(sae, epochs(shards, cfg.tokens), cfg, out)
