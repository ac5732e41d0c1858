"""Evaluate an SAE against the model it belongs to, on a held-out token mix.

One call gives what ``refusal-steer sae eval --model`` prints: reconstruction metrics (MSE, FVU, L0,
dead/dense fractions) on the activations recorded at the SAE's hook point, and the spliced metrics (CE
loss recovered, KL, with and without the error term). Both skip the chat template's fixed prefix, as
training does (:mod:`refusal_steer.sae.corpus`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..generation import left_pad, length_order, position_ids
from ..hooks import HookPoint, run_and_record
from ..models.loaded import LoadedModel
from .base import Sae
from .corpus import TokenMix, mix_token_lists
from .io import check_width
from .metrics import evaluate_sae, spliced_metrics


def _batches(lm: LoadedModel, sequences: list[list[int]], batch_size: int) -> list[dict[str, Tensor]]:
    order = length_order([len(s) for s in sequences])
    out = []
    for start in range(0, len(order), batch_size):
        batch = left_pad([sequences[i] for i in order[start : start + batch_size]], lm.tokenizer.pad_token_id, lm.device)
        batch["position_ids"] = position_ids(batch["attention_mask"])
        out.append(batch)
    return out


def _recorded(lm: LoadedModel, batches: list[dict[str, Tensor]], point: HookPoint, skip: int, progress: bool) -> Iterator[Tensor]:
    for batch in tqdm(batches, desc=f"recording {point}", unit="batch", disable=not progress, leave=False):
        x = run_and_record(lm, batch, [point])[point]
        # position_ids count each row's real tokens from 0 (see _batches)
        yield x[batch["attention_mask"].bool() & (batch["position_ids"] >= skip)].float()


@torch.no_grad()
def evaluate_on_model(
    lm: LoadedModel,
    sae: Sae,
    *,
    point: HookPoint | str | None = None,
    n_tokens: int = 20_000,
    split: str = "test",
    mix: TokenMix = TokenMix(),
    batch_size: int = 8,
    seed: int = 0,
    dense_threshold: float = 0.1,
    spliced: bool = True,
    spliced_tokens: int = 2_500,
    spliced_batch_size: int = 2,
    with_error: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Reconstruction metrics of ``sae`` on about ``n_tokens`` held-out mix tokens, and (``spliced=True``) the
    spliced metrics on the first ``spliced_tokens`` of them.

    The reconstruction metrics cost one forward pass that stops at the SAE's layer; the spliced ones two
    (three ``with_error``) full passes with full-vocabulary logits, besides the clean one, so they are
    bounded separately: 2,500 tokens in batches of 2 keep the default model's evaluation under 5 minutes
    and 4 GB on a 2-core CPU (BENCHMARKS.md).

    Example:
        >>> evaluate_on_model(load_model("default"), load_sae("sae/"), n_tokens=20_000)["fvu"]  # doctest: +SKIP
    """
    from ..errors import ConfigError

    where = point if point is not None else sae.cfg.point
    if where is None:
        raise ConfigError("the SAE records no hook point", fix="pass --point resid_pre.L")
    hp = HookPoint.parse(where)
    hp.validate(lm)
    check_width(sae, hp.width(lm), source=f"the model's {hp}")
    sequences, skip = mix_token_lists(lm, n_tokens, split=split, mix=mix, seed=seed)
    batches = _batches(lm, sequences, batch_size)
    reconstruction = evaluate_sae(sae, _recorded(lm, batches, hp, skip, progress), dense_threshold=dense_threshold)
    out = {"point": str(hp), "split": split, "n_sequences": len(sequences), "skip_tokens": skip, **reconstruction.to_dict()}
    if spliced:
        subset, total = [], 0
        for seq in sequences:
            if total >= spliced_tokens:
                break
            subset.append(seq)
            total += len(seq) - skip
        batches_bar = tqdm(_batches(lm, subset, spliced_batch_size), desc="spliced CE/KL", unit="batch", disable=not progress, leave=False)
        result = spliced_metrics(lm, sae, batches_bar, hp, skip_tokens=skip, with_error=with_error)
        out.update({k: v for k, v in result.to_dict().items() if k != "n_tokens"}, n_tokens_spliced=result.n_tokens)
    return out


__all__ = ["evaluate_on_model"]
