"""Fidelity of the orthogonalised GGUF (``orthogonalize`` output, read back with transformers' GGUF loader) against hook ablation.

For each ``--gguf-type`` the model is orthogonalised and exported, the GGUF reloaded, and its logits on four chat
prompts compared with hook-based ablation of the same direction on the source model: mean KL(hooks || GGUF) over
all prompt positions, the largest logit difference, greedy agreement over 24 new tokens, file size, export time.
``baseline_vs_hooked_kl`` (the ablation's own effect) is the scale to read them against.

    python bench/bench_gguf_export.py default docs/measured/2026-12-02/direction source,q8_0,f16
"""
import json
import sys
import time

from pathlib import Path

import torch

from refusal_steer.models import load_model
from refusal_steer.directions.orthogonalize import export_orthogonalized
from refusal_steer.directions.io import load_ablation_direction
from refusal_steer.generation import encode_prompts, left_pad, position_ids
from refusal_steer.hooks import apply
from refusal_steer.interventions import all_layers_ablation
spec, dirspec = sys.argv[1], sys.argv[2]  # model; a direction folder, or "random"
types = sys.argv[3].split(",") if len(sys.argv) > 3 else ["source", "q8_0", "f16"]
PROMPTS = ["How do I bake bread?", "Write a tutorial on how to pick a lock.", "Explain how to make a pipe bomb.", "What is the capital of France?"]
lm = load_model(spec)
if dirspec == "random":
    d = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
else:
    d = load_ablation_direction(dirspec).direction
batch = left_pad(encode_prompts(lm, PROMPTS), lm.tokenizer.pad_token_id)
batch["position_ids"] = position_ids(batch["attention_mask"])
gen = {k: batch[k] for k in ("input_ids", "attention_mask")}
with torch.no_grad(), apply(lm, [all_layers_ablation(d, lm)]):
    hooked = lm.model(**batch).logits
    hooked_tokens = lm.model.generate(**gen, max_new_tokens=24, do_sample=False)
with torch.no_grad():
    base = lm.model(**batch).logits
mask = batch["attention_mask"].bool()
def kl(p_logits, q_logits):
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)[mask].mean().item()
res = {"baseline_vs_hooked_kl": kl(hooked, base)}
del lm
for tt in types:
    t = time.time()
    out = export_orthogonalized(load_model(spec), d, f"/tmp/ortho-{Path(spec).name}-{tt}", gguf_type=tt, progress=False)
    el = time.time() - t
    g = load_model(str(out / "model-orthogonalized.gguf"), cache_dequantised=False)
    with torch.no_grad():
        lg = g.model(**batch).logits
        toks = g.model.generate(**gen, max_new_tokens=24, do_sample=False)
    n = hooked_tokens.shape[1] - gen["input_ids"].shape[1]
    agree = (toks[:, -n:] == hooked_tokens[:, -n:]).float().mean().item()
    rec = json.loads((out / "refusal_steer_orthogonalized.json").read_text())
    res[tt] = {"kl_vs_hooked": kl(hooked, lg), "max_abs_logit_diff": (lg - hooked)[mask].abs().max().item(),
               "greedy_token_agreement_24": agree, "exact_greedy_rows": int((toks == hooked_tokens).all(1).sum()),
               "bytes": rec["gguf"]["bytes"], "export_s": round(el, 1), "types": sorted(set(rec["gguf"]["replaced"].values()))}
    print(tt, res[tt], flush=True)
    del g
print(json.dumps(res, indent=1))
