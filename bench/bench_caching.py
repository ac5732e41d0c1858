"""Activation caching: refusal-steer vs TransformerLens ``run_with_cache`` vs nnsight tracing.

Each tool runs in its own subprocess on the same model (the default Qwen2.5-Coder-0.5B-Instruct,
float32, CPU; TransformerLens gets the same weights converted with its own Qwen2 converter), the same
chat-formatted prompts and the same left-padded batches, and caches one layer's residual stream
(``resid_pre.LAYER`` = TL ``blocks.LAYER.hook_resid_pre`` = nnsight ``model.layers[LAYER].input``) at
the last prompt token. ``*_stop`` variants use each tool's own early exit (TL ``stop_at_layer``,
nnsight ``tracer.stop()``), as refusal-steer stops after the deepest requested point. refusal-steer
computes each batch's common chat-template prefix once (``refusal_steer.batching``);
``refusal_steer_noshare`` turns that off, to show what it contributes. Throughput counts non-padding prompt tokens per second of the caching loop
(model loading excluded). Peak memory is the process's peak RSS during the caching loop (VmHWM
reset after loading via /proc/self/clear_refs) and, separately, over the whole process.

Run (TransformerLens and nnsight live in an isolated venv, see BENCHMARKS.md):
    PYTHONPATH=src /tmp/benchenv/bin/python bench/bench_caching.py --n 256 --batch-size 8 --layer 12
    # GPU, bf16, random weights of a published shape (see bench/_models.py); peak memory is then the GPU's:
    PYTHONPATH=src python bench/bench_caching.py --device cuda --dtype bfloat16 --shape llama-3-8b --tokenizer bench/.tokenizers --batch-size 32 --layer 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import add_model_arguments, bench_model, synchronize  # noqa: E402
from _prompts import bench_prompts  # noqa: E402

TOOLS = ("refusal_steer", "refusal_steer_noshare", "transformer_lens", "transformer_lens_stop", "nnsight", "nnsight_stop")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(tool: str, n: int, batch_size: int, layer: int, threads: int, model_args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(threads)
    from refusal_steer.generation import encode_prompts, left_pad, length_order, position_ids

    device = model_args.device
    lm = bench_model(model_args.shape, device=device, dtype=model_args.dtype, tokenizer_dir=model_args.tokenizer)
    prompts = bench_prompts(n)
    encoded = encode_prompts(lm, prompts)
    order = length_order([len(t) for t in encoded])
    batches = []
    for start in range(0, n, batch_size):
        lists = [encoded[i] for i in order[start:start + batch_size]]
        batch = left_pad(lists, lm.tokenizer.pad_token_id, lm.device)
        batch["position_ids"] = position_ids(batch["attention_mask"])
        batches.append(batch)
    n_tokens = sum(len(t) for t in encoded)
    run = None
    if tool.startswith("refusal_steer"):
        from refusal_steer.activations import cache_activations, load_activations

        share = tool == "refusal_steer"  # _noshare: the chat template's common prefix recomputed in every row, as the others do

        def run(rows: int = n) -> None:
            folder = tempfile.mkdtemp(prefix="bench-acts-")
            cache_activations(lm, prompts[:rows], f"resid_pre.{layer}", folder, positions="last", batch_size=batch_size, progress=False,
                              share_prefix=share)
            assert load_activations(folder, f"resid_pre.{layer}").shape == (rows, lm.d_model)
    elif tool.startswith("transformer_lens"):
        model = _transformer_lens(lm, device)
        lm.model = None  # keep one copy of the weights, as a TL user would
        import gc

        gc.collect()
        name = f"blocks.{layer}.hook_resid_pre"
        stop = layer + 1 if tool.endswith("_stop") else None

        def run(rows: int = n) -> None:
            kept = []
            with torch.no_grad():
                for batch in batches[:math.ceil(rows / batch_size)]:
                    _, cache = model.run_with_cache(batch["input_ids"], attention_mask=batch["attention_mask"], names_filter=name, stop_at_layer=stop)
                    kept.append(cache[name][:, -1].clone())
            assert torch.cat(kept).shape[0] == min(rows, n)
    elif tool.startswith("nnsight"):
        from nnsight import LanguageModel

        model = LanguageModel(lm.model, tokenizer=lm.tokenizer)
        stop = tool.endswith("_stop")

        def run(rows: int = n) -> None:
            kept = []
            with torch.no_grad():
                for batch in batches[:math.ceil(rows / batch_size)]:
                    with model.trace(dict(batch)) as tracer:
                        saved = model.model.layers[layer].input.save()
                        if stop:  # nnsight's early exit: the layers past this point do not run
                            tracer.stop()
                    kept.append(saved[:, -1].clone())
            assert torch.cat(kept).shape[0] == min(rows, n)
    else:
        raise SystemExit(f"unknown tool {tool}")
    if device.startswith("cuda"):
        run(2 * batch_size)  # load the CUDA kernels before timing
        torch.cuda.reset_peak_memory_stats()
    _reset_peak()
    before = _rss_kib("VmRSS")
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    seconds = time.perf_counter() - started
    gpu = {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if device.startswith("cuda") else {}
    return {
        "tool": tool,
        **gpu,
        "seconds": seconds,
        "tokens": n_tokens,
        "tokens_per_s": n_tokens / seconds,
        "rss_before_mib": before / 1024,
        "peak_rss_during_mib": _rss_kib("VmHWM") / 1024,
        "peak_rss_process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _transformer_lens(lm, device: str):
    """The same weights in TransformerLens (its hub config lookup is unavailable offline, so the config is built here)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights, convert_qwen2_weights

    llama = lm.config.model_type == "llama"
    c = lm.config
    rope = getattr(c, "rope_parameters", None) or {}
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=2048,
        d_vocab=c.vocab_size, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_base=int(rope.get("rope_theta", getattr(c, "rope_theta", 10000))), rotary_dim=c.hidden_size // c.num_attention_heads,
        gated_mlp=True, final_rms=True, eps=c.rms_norm_eps, rotary_adjacent_pairs=False,
        original_architecture="LlamaForCausalLM" if llama else "Qwen2ForCausalLM",
        default_prepend_bos=False, tokenizer_prepends_bos=False, dtype=lm.dtype, device=device,
    )
    model = HookedTransformer(cfg, tokenizer=lm.tokenizer, move_to_device=True)
    model.load_and_process_state_dict(
        (convert_llama_weights if llama else convert_qwen2_weights)(lm.model, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool (median reported)")
    parser.add_argument("--tools", default=",".join(TOOLS))
    add_model_arguments(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.batch_size, args.layer, args.threads, args)))
        return
    results: dict[str, list[dict]] = {}
    tools = args.tools.split(",")
    for _ in range(args.repeats):
        for tool in tools:
            cmd = [sys.executable, __file__, "--child", tool, "--n", str(args.n), "--batch-size", str(args.batch_size),
                   "--layer", str(args.layer), "--threads", str(args.threads), "--shape", args.shape, "--device", args.device,
                   "--dtype", args.dtype] + (["--tokenizer", str(args.tokenizer)] if args.tokenizer else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                print(f"{tool} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results.setdefault(tool, []).append(row)
            print(json.dumps(row), flush=True)
    summary = {tool: {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "tool"} for tool, rows in results.items()}
    ours = summary.get("refusal_steer")
    where = args.device if args.device.startswith("cuda") else f"{args.threads} CPU threads"
    print(f"\nactivation caching, {args.shape} ({args.dtype}), resid_pre.{args.layer}, last token, {args.n} prompts, "
          f"batch {args.batch_size}, {where}")
    gpu = args.device.startswith("cuda")
    print(f"{'tool':24s} {'tok/s':>8s} {'s':>8s} {'peak RSS caching MiB':>21s} {'peak RSS process MiB':>21s} "
          + (f"{'peak GPU MiB':>13s} " if gpu else "") + f"{'speed-up (ours/x)':>18s}")
    for tool, s in summary.items():
        ratio = ours["tokens_per_s"] / s["tokens_per_s"] if ours else float("nan")
        print(f"{tool:24s} {s['tokens_per_s']:8.1f} {s['seconds']:8.1f} {s['peak_rss_during_mib']:21.0f} {s['peak_rss_process_mib']:21.0f} "
              + (f"{s['peak_gpu_mib']:13.0f} " if gpu else "") + f"{ratio:18.2f}")


if __name__ == "__main__":
    main()
