"""Steered generation overhead: refusal-steer ``generate`` with ablation at every layer vs plain ``model.generate``.

Same model (the default Qwen2.5-Coder-0.5B-Instruct, float32), same chat-formatted, left-padded batch
of 8 prompts, greedy, 64 new tokens, KV cache on. Three variants, interleaved, ``--repeats`` times each:

- ``plain``: ``model.generate`` on the pre-tokenised batch, no hooks at all (the baseline);
- ``ours_empty``: ``refusal_steer.generation.generate`` with no intervention (formatting, sorting, our hooks' bookkeeping);
- ``ours_ablate``: the same with a random unit direction ablated at all 3 x n_layers residual writes
  (resid_pre, attn_out, mlp_out of every layer, Arditi et al. 2024).

``min_new_tokens`` is not used; prompts ask for long answers so every row generates all 64 tokens
(checked and printed). Ratios are of median wall time.

Run:
    PYTHONPATH=src python bench/bench_generation.py --repeats 3
    # GPU, bf16, random weights of a published shape (see bench/_models.py):
    PYTHONPATH=src python bench/bench_generation.py --device cuda --dtype bfloat16 --shape llama-3-8b --tokenizer bench/.tokenizers
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import add_model_arguments, bench_model, synchronize  # noqa: E402

PROMPTS = [
    "Write a long essay about the history of bread.",
    "Write a long essay about how airplanes fly.",
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how vaccines train the immune system.",
    "Describe, step by step, how to plan a vegetable garden.",
    "Write a long essay about the French revolution.",
    "Explain in detail how search engines rank pages.",
    "Write a detailed guide to training for a marathon.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=len(PROMPTS), help="rows (the 8 prompts repeated)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from refusal_steer.generation import encode_prompts, generate, generation_kwargs, left_pad
    from refusal_steer.interventions import all_layers_ablation

    lm = bench_model(args.shape, device=args.device, dtype=args.dtype, tokenizer_dir=args.tokenizer)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch_size)]
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    ablation = all_layers_ablation(direction, lm)
    batch = left_pad(encode_prompts(lm, prompts), lm.tokenizer.pad_token_id, lm.device)
    kwargs = generation_kwargs(lm, max_new_tokens=args.max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0, use_cache=True)

    def plain() -> int:
        with torch.inference_mode():
            out = lm.model.generate(**batch, **kwargs)
        synchronize(args.device)
        return int(out.shape[1] - batch["input_ids"].shape[1]) * len(prompts)

    def ours(interventions) -> int:
        completions = generate(lm, prompts, interventions, max_new_tokens=args.max_new_tokens, batch_size=len(prompts), progress=False)
        synchronize(args.device)
        return sum(c.n_new_tokens for c in completions)

    variants = {"plain": plain, "ours_empty": lambda: ours([]), "ours_ablate": lambda: ours([ablation])}
    plain()  # warm-up (and the first CUDA kernels' load)
    ours([ablation])
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["plain"])
    device = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else f"{args.threads} CPU threads"
    print(f"generation: {lm.spec} ({lm.n_layers} layers, d_model {lm.d_model}), {lm.dtype}, batch {len(prompts)}, "
          f"{args.max_new_tokens} new tokens, greedy, KV cache, {device}, torch {torch.__version__}; "
          f"{len(ablation.points)} ablation hooks")
    print(f"{'variant':12s} {'median s':>9s} {'min s':>8s} {'new tokens':>11s} {'tok/s':>8s} {'ratio vs plain':>15s}  runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:12s} {median:9.2f} {min(values):8.2f} {tokens[name]:11d} {tokens[name] / median:8.1f} {median / base:15.3f}  "
              + " ".join(f"{v:.2f}" for v in values))
    if lm.device.type == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(lm.device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
