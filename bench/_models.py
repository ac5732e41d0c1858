"""Models for the benchmarks: the default model, or random-weight models of published shapes for throughput.

``--shape default`` loads the pinned default model (real weights). ``qwen2.5-0.5b`` and ``llama-3-8b``
build random-weight models with those models' published configs (random weights are fine for
throughput, and the GPU machine cannot fetch real ones), directly on the target device in the target
dtype. They need a tokenizer: ``--tokenizer DIR`` (a ``save_pretrained`` folder), else the one of the
default model (``qwen2.5-0.5b``) or of the pinned SmolLM2 fixture (``llama-3-8b``: its 49,152 ids all
fit Llama 3's 128,256-row embedding, so the model keeps Llama 3's exact shape). Save both once with
``python bench/_models.py --save-tokenizers bench/.tokenizers`` and carry that folder to a GPU machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

SHAPES = ("default", "qwen2.5-0.5b", "llama-3-8b")

# Published configs (Qwen/Qwen2.5-0.5B-Instruct, meta-llama/Meta-Llama-3-8B-Instruct config.json).
CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        tie_word_embeddings=True, hidden_act="silu",
    ),
    "llama-3-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500_000.0,
        tie_word_embeddings=False, hidden_act="silu",
    ),
}
TOKENIZER_SOURCE = {"qwen2.5-0.5b": "default", "llama-3-8b": "smollm2"}


def _tokenizer(shape: str, tokenizer_dir: Path | None) -> Any:
    from transformers import AutoTokenizer

    folder = tokenizer_dir / TOKENIZER_SOURCE[shape] if tokenizer_dir is not None else None
    if folder is not None and folder.is_dir():
        return AutoTokenizer.from_pretrained(folder)
    from refusal_steer.models import load_model

    return load_model(TOKENIZER_SOURCE[shape]).tokenizer


def bench_model(shape: str = "default", *, device: str = "cpu", dtype: str = "float32", tokenizer_dir: Path | None = None):
    """A :class:`~refusal_steer.models.LoadedModel` of ``shape`` on ``device`` in ``dtype`` (see the module docstring)."""
    from refusal_steer.models import LoadedModel, load_model
    from refusal_steer.models.loading import parse_dtype

    torch_dtype = parse_dtype(dtype)
    if shape == "default":
        return load_model("default", dtype=torch_dtype, device=device)
    if shape not in CONFIGS:
        raise SystemExit(f"unknown --shape {shape!r}; use one of {', '.join(SHAPES)}")
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(CONFIGS[shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    tokenizer = _tokenizer(shape, tokenizer_dir)
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"tokenizer has {len(tokenizer)} ids, more than the {shape} shape's {config.vocab_size}")
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the target device: an 8B model initialised on CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, spec=f"random-{shape}")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--shape``, ``--device``, ``--dtype``, ``--tokenizer`` for a bench script."""
    parser.add_argument("--shape", default="default", choices=SHAPES, help="model: the default model, or random weights of this shape")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder from --save-tokenizers (for random-weight shapes offline)")


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings include it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description="save the tokenizers random-weight shapes use")
    parser.add_argument("--save-tokenizers", type=Path, required=True)
    args = parser.parse_args()
    from refusal_steer.models import load_model

    for name in sorted(set(TOKENIZER_SOURCE.values())):
        load_model(name).tokenizer.save_pretrained(args.save_tokenizers / name)
        print(f"saved {name} tokenizer -> {args.save_tokenizers / name}")


if __name__ == "__main__":
    main()
