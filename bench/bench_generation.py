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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from refusal_steer.generation import encode_prompts, generate, generation_kwargs, left_pad
    from refusal_steer.interventions import all_layers_ablation
    from refusal_steer.models import load_model

    lm = load_model(args.model)
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    ablation = all_layers_ablation(direction, lm)
    batch = left_pad(encode_prompts(lm, PROMPTS), lm.tokenizer.pad_token_id, lm.device)
    kwargs = generation_kwargs(lm, max_new_tokens=args.max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0, use_cache=True)

    def plain() -> int:
        with torch.inference_mode():
            out = lm.model.generate(**batch, **kwargs)
        return int(out.shape[1] - batch["input_ids"].shape[1]) * len(PROMPTS)

    def ours(interventions) -> int:
        completions = generate(lm, PROMPTS, interventions, max_new_tokens=args.max_new_tokens, batch_size=len(PROMPTS), progress=False)
        return sum(c.n_new_tokens for c in completions)

    variants = {"plain": plain, "ours_empty": lambda: ours([]), "ours_ablate": lambda: ours([ablation])}
    plain()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["plain"])
    print(f"generation: {lm.spec}, batch {len(PROMPTS)}, {args.max_new_tokens} new tokens, greedy, KV cache, "
          f"{args.threads} threads, {torch.__version__}, device {lm.device}; {len(ablation.points)} ablation hooks")
    print(f"{'variant':12s} {'median s':>9s} {'min s':>8s} {'new tokens':>11s} {'tok/s':>8s} {'ratio vs plain':>15s}  runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:12s} {median:9.2f} {min(values):8.2f} {tokens[name]:11d} {tokens[name] / median:8.1f} {median / base:15.3f}  "
              + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
