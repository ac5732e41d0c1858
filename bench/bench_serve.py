"""Load test of ``refusal-steer serve``: K concurrent clients, mixed presets, against plain batched ``generate``.

The same requests (prompt x preset: the unsteered model, directional ablation, and a gate that ablates only for
prompts whose last token reads close to the refusal direction) are answered twice in one run:

1. **baseline**: library ``generate`` per preset, batches of ``--max-batch``, timed — the throughput to match;
   its greedy texts are the references;
2. **server**: uvicorn on 127.0.0.1 with ``--clients`` threads sending chat requests (``temperature=0``) through
   httpx until every request is answered or ``--duration`` seconds pass.

Reported: tokens/s of both and their ratio (target >= 0.8), p50/p95/max latency, errors (non-200 answers),
**leaks** (an answer equal to another preset's reference for that prompt and not to its own) and mismatches (any
answer not equal to its own reference: batch composition can move float32 near-ties, a leak cannot hide in these
because the presets' references differ), batches run, and peak resident memory. ``--out FILE.json`` keeps it all.

    python bench/bench_serve.py --model default --direction docs/measured/2026-12-02/direction --prompts 72 --clients 24
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _prompts import bench_prompts  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompts(n: int) -> list[str]:
    """Half harmful (AdvBench, pinned; ablation changes their answers), half harmless (bench/_prompts.py)."""
    from refusal_steer.data import load_dataset

    harmful = [r.prompt for r in load_dataset("advbench")][-(n - n // 2):]  # the end of AdvBench, far from the demo's fit prompts
    return [p for pair in zip(harmful, bench_prompts(n // 2)) for p in pair] + harmful[n // 2:]


def _gate_file(lm: Any, direction_dir: str, prompts: list[str], folder: Path) -> Path:
    """A gate that ablates the refusal direction for the prompts scoring above the median cosine with it."""
    from refusal_steer.directions.io import load_ablation_direction
    from refusal_steer.generation import encode_prompts
    from refusal_steer.hooks import run_and_record
    from refusal_steer.interventions import Cosine, Gate, all_layers_ablation, save_steer_file

    saved = load_ablation_direction(direction_dir)
    point = saved.point
    condition = Cosine(saved.direction)
    scores = []
    for tokens in encode_prompts(lm, [[{"role": "user", "content": p}] for p in prompts]):
        (acts,) = run_and_record(lm, {"input_ids": torch.tensor([tokens])}, [str(point)]).values()
        scores.append(float(condition.score(acts[0, -1])))
    path = folder / "gate.yaml"
    save_steer_file(path, [Gate(condition, str(point), threshold=statistics.median(scores), steer=[all_layers_ablation(saved.direction, lm)])])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--direction", default="docs/measured/2026-12-02/direction", help="folder from 'direction' (ablate:DIR)")
    parser.add_argument("--prompts", type=int, default=72, help="distinct prompts; each is asked under every preset")
    parser.add_argument("--clients", type=int, default=24, help="concurrent client threads")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=900.0, help="stop sending after this many seconds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import httpx
    import uvicorn

    from refusal_steer.generation import generate
    from refusal_steer.models import load_model
    from refusal_steer.server import ServerConfig, create_app, load_presets

    lm = load_model(args.model)
    prompts = _prompts(args.prompts)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    specs = {"plain": "none", "ablated": f"ablate:{args.direction}", "gated": str(_gate_file(lm, args.direction, prompts, tmp))}
    presets = load_presets(lm, specs)

    # 1. Baseline: plain batched generate, one preset at a time.
    references: dict[str, list[str]] = {}
    baseline_tokens, t0 = 0, time.perf_counter()
    for name in specs:
        out = generate(lm, prompts, presets[name].interventions, max_new_tokens=args.max_tokens, batch_size=args.max_batch, progress=True)
        references[name] = [c.text for c in out]
        baseline_tokens += sum(c.n_new_tokens for c in out)
    baseline_s = time.perf_counter() - t0
    distinct = sum(len({references[n][i] for n in specs}) > 1 for i in range(len(prompts)))
    print(f"baseline: {baseline_tokens} tokens in {baseline_s:.1f} s = {baseline_tokens / baseline_s:.2f} tokens/s; "
          f"{distinct}/{len(prompts)} prompts have answers that differ between presets", flush=True)

    # 2. The server, K concurrent clients.
    config = ServerConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=max(64, args.clients * 2),
                          timeout_s=args.duration + 600)
    app = create_app(lm, presets, config, model_id="m")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    jobs = [(name, i) for i in range(len(prompts)) for name in specs]
    random.Random(0).shuffle(jobs)
    lock = threading.Lock()
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    deadline = start + args.duration

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=args.duration + 600) as http:
            while time.perf_counter() < deadline:
                with lock:
                    if not jobs:
                        return
                    name, i = jobs.pop()
                body = {"model": f"m@{name}" if name != "plain" else "m", "temperature": 0, "max_tokens": args.max_tokens,
                        "messages": [{"role": "user", "content": prompts[i]}]}
                sent = time.perf_counter()
                try:
                    response = http.post("/v1/chat/completions", json=body)
                    status, payload = response.status_code, response.json()
                except Exception as exc:  # a transport error is an error, recorded, not a crash of the bench
                    status, payload = -1, {"error": repr(exc)}
                record = {"preset": name, "prompt": i, "status": status, "latency_s": time.perf_counter() - sent}
                if status == 200:
                    record["text"] = payload["choices"][0]["message"]["content"]
                    record["tokens"] = payload["usage"]["completion_tokens"]
                    record["served_by"] = payload["refusal_steer"]["preset"]
                else:
                    record["error"] = payload
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server_s = time.perf_counter() - start
    batch_sizes = list(app.state.scheduler.batch_sizes)
    server.should_exit = True
    thread.join(timeout=30)

    ok = [r for r in records if r["status"] == 200]
    served_tokens = sum(r["tokens"] for r in ok)
    leaks = [r for r in ok if r["text"] != references[r["preset"]][r["prompt"]]
             and any(r["text"] == references[n][r["prompt"]] for n in specs if n != r["preset"])]
    wrong_preset = [r for r in ok if r["served_by"] != (r["preset"] if r["preset"] != "plain" else "none")]  # plain asks the bare id
    mismatches = [r for r in ok if r["text"] != references[r["preset"]][r["prompt"]]]
    latencies = sorted(r["latency_s"] for r in ok)

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    # Like for like: the baseline's tokens per second over the requests the server answered.
    baseline_tps = baseline_tokens / baseline_s
    result = {
        "model": args.model, "presets": specs, "prompts": len(prompts), "requests": len(records), "answered": len(ok),
        "clients": args.clients, "max_tokens": args.max_tokens, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
        "baseline": {"tokens": baseline_tokens, "seconds": round(baseline_s, 2), "tokens_per_s": round(baseline_tps, 3)},
        "server": {"tokens": served_tokens, "seconds": round(server_s, 2), "tokens_per_s": round(served_tokens / server_s, 3),
                   "p50_s": round(quantile(0.5), 2), "p95_s": round(quantile(0.95), 2), "max_s": round(quantile(1.0), 2),
                   "batches": len(batch_sizes), "mean_batch": round(statistics.mean(batch_sizes), 2) if batch_sizes else 0},
        "ratio_server_over_baseline": round((served_tokens / server_s) / baseline_tps, 3),
        "errors": len(records) - len(ok), "leaks": len(leaks), "wrong_preset": len(wrong_preset), "mismatches": len(mismatches),
        "prompts_with_differing_presets": distinct,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps({**result, "mismatch_examples": mismatches[:5]}, indent=1))


if __name__ == "__main__":
    main()
