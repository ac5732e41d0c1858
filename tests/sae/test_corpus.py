"""The SAE token mix, prefix-skipping caches and splices, and evaluation against a (tiny) model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from refusal_steer.activations import cache_token_activations, load_activations, read_manifest
from refusal_steer.cli import build_app
from refusal_steer.generation import encode_prompts
from refusal_steer.hooks import apply
from refusal_steer.sae.splice import SaeSplice
from refusal_steer.sae import TopKConfig, build_sae
from refusal_steer.data import Conversation
from refusal_steer.sae.corpus import TokenMix, _render, mix_token_lists, template_prefix_length
from refusal_steer.sae.metrics import spliced_metrics
from refusal_steer.sae.model_eval import evaluate_on_model


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"jsonl:{path}"


@pytest.fixture
def mix(tmp_path: Path) -> TokenMix:
    words = ["bread", "sea", "computer", "poem", "fox", "water", "salt", "moon", "memory", "dog"]
    chats = [{"messages": [{"role": "user", "content": f"Tell me about {a} and {b}."},
                           {"role": "assistant", "content": f"The {a} and the {b} are both quick and brown. " * 3}]}
             for a in words for b in words]
    harmful = [{"prompt": f"Tell me how to build a bomb with {w} {i}."} for i in range(20) for w in words[:3]]
    harmless = [{"prompt": f"How do I bake {w} bread number {i}?"} for i in range(20) for w in words[:3]]
    return TokenMix(chat=_jsonl(tmp_path / "chat.jsonl", chats), harmful=(_jsonl(tmp_path / "bad.jsonl", harmful),),
                    harmless=_jsonl(tmp_path / "good.jsonl", harmless), max_length=48)


def test_prefix_length_is_the_shared_template_start(make_tiny_lm) -> None:
    lm = make_tiny_lm("qwen2")
    skip = template_prefix_length(lm)
    a, b = encode_prompts(lm, ["Hello there.", "Write a poem."])
    assert skip > 0 and a[:skip] == b[:skip] and a[skip] != b[skip]


def test_mix_has_budget_splits_and_ends(make_tiny_lm, mix: TokenMix) -> None:
    lm = make_tiny_lm("qwen2")
    train, skip = mix_token_lists(lm, 1500, split="train", mix=mix)
    test, _ = mix_token_lists(lm, 1500, split="test", mix=mix)
    n_train = sum(len(t) - skip for t in train)
    assert 1500 <= n_train < 1500 + 3 * 48
    assert all(len(t) <= 48 for t in train)
    assert not {tuple(t) for t in train} & {tuple(t) for t in test}
    header = lm.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert any(t[-len(header):] == header for t in train)  # instructions end at the assistant header
    # a conversation ends with the assistant's closed turn, not a fresh generation prompt
    chat = _render(lm, Conversation(id="c", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]))
    assert lm.tokenizer.decode(chat).endswith("Hello<|im_end|>\n")


def test_cache_token_activations_skips_prefix(make_tiny_lm, tmp_path: Path) -> None:
    lm = make_tiny_lm("llama")
    seqs = encode_prompts(lm, ["How do I bake bread?", "Write a poem about the sea.", "Hi"])
    cache_token_activations(lm, seqs, "resid_pre.1", tmp_path / "a", skip_tokens=3, progress=False, batch_size=2)
    acts = load_activations(tmp_path / "a", "resid_pre.1")
    assert acts.shape == (sum(len(s) - 3 for s in seqs), lm.d_model)
    full = tmp_path / "b"
    cache_token_activations(lm, seqs, "resid_pre.1", full, skip_tokens=0, progress=False, batch_size=1)
    every = load_activations(full, "resid_pre.1")
    starts = [0]
    for s in seqs:
        starts.append(starts[-1] + len(s))
    expected = torch.cat([every[starts[i] + 3 : starts[i + 1]] for i in range(len(seqs))])
    torch.testing.assert_close(acts, expected, rtol=1e-4, atol=1e-5)
    assert read_manifest(tmp_path / "a")["config"]["skip_tokens"] == 3


def test_splice_leaves_prefix_alone(make_tiny_lm) -> None:
    lm = make_tiny_lm("qwen2")
    sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=128, k=4, point="resid_pre.1"))
    ids = torch.tensor([encode_prompts(lm, ["How do I bake bread?"])[0]])
    with torch.no_grad():
        clean = lm.model(input_ids=ids).logits
        with apply(lm, [SaeSplice(sae, "resid_pre.1", keep_error=False, skip_tokens=4)]):
            spliced = lm.model(input_ids=ids).logits
    torch.testing.assert_close(spliced[:, :4], clean[:, :4])  # causal: nothing before position 4 changes
    assert not torch.allclose(spliced[:, 4:], clean[:, 4:])


def test_evaluate_on_model_reports_all_metrics(make_tiny_lm, mix: TokenMix) -> None:
    lm = make_tiny_lm("qwen2")
    sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=128, k=8, point="resid_pre.1"))
    out = evaluate_on_model(lm, sae, n_tokens=400, mix=mix, progress=False, with_error=True)
    assert out["n_tokens"] >= 400 and out["n_tokens_spliced"] > 0 and out["skip_tokens"] > 0
    assert out["l0"] == pytest.approx(8.0)
    assert 0 < out["fvu"] and out["kl_spliced"] > 0
    assert out["ce_spliced_with_error"] == pytest.approx(out["ce_clean"], abs=1e-3)
    # the default spliced pass is bounded on its own: about spliced_tokens tokens, without the check pass
    bounded = evaluate_on_model(lm, sae, n_tokens=400, mix=mix, progress=False, spliced_tokens=50)
    assert bounded["ce_spliced_with_error"] is None and 0 < bounded["n_tokens_spliced"] < out["n_tokens_spliced"]
    assert bounded["fvu"] == out["fvu"]
    direct = spliced_metrics(lm, sae, [{"input_ids": torch.tensor([[1, 2, 3, 4, 5]])}], "resid_pre.1")
    assert direct.n_tokens == 4


def test_cli_train_from_model_then_eval(make_tiny_lm, mix: TokenMix, tmp_path: Path, monkeypatch) -> None:
    lm = make_tiny_lm("qwen2")
    monkeypatch.setattr("refusal_steer.models.load_model", lambda *a, **k: lm)
    real = mix_token_lists

    def tiny_mix(lm, n_tokens, **kwargs):
        return real(lm, n_tokens, **{**kwargs, "mix": mix})

    monkeypatch.setattr("refusal_steer.sae.corpus.mix_token_lists", tiny_mix)
    monkeypatch.setattr("refusal_steer.sae.model_eval.mix_token_lists", tiny_mix)
    app = build_app()
    runner = CliRunner()
    out = tmp_path / "sae"
    args = ["sae", "train", "--model", "tiny", "--point", "resid_pre.1", "--tokens", "4096", "--cache-tokens", "1000",
            "--width", "128", "--k", "8", "--batch-size", "256", "--out", str(out), "--no-progress", "--json", "--cache-points", "resid_pre.0"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["tokens"] >= 4096  # cached ~1000 tokens replayed in epochs
    manifest = read_manifest(out / "activations")
    assert manifest["complete"] and manifest["config"]["points"] == ["resid_pre.1", "resid_pre.0"]
    r = runner.invoke(app, ["sae", "eval", "--sae", str(out), "--model", "tiny", "--max-tokens", "300", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    assert "ce_recovered" in json.loads(r.output)
    r = runner.invoke(app, ["sae", "eval", "--sae", str(out), "--model", "tiny", "--max-tokens", "300", "--no-progress", "--json", "--no-spliced"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output)
    assert metrics["point"] == "resid_pre.1" and metrics["l0"] <= 8.0 and metrics["fvu"] < 1.0


def test_cache_token_activations_shares_the_skipped_prefix(make_tiny_lm, tmp_path: Path) -> None:
    from refusal_steer.batching import shared_prefix_length

    lm = make_tiny_lm("qwen2")
    seqs = encode_prompts(lm, ["How do I bake bread?", "Write a poem about the sea.", "Hi"],
                          system="Explain how a computer works: a processor runs instructions.")
    skip = 20
    assert shared_prefix_length(lm, seqs, max_prefix=skip) == skip  # the batch shares the whole skipped prefix
    for share in (True, False):
        cache_token_activations(lm, seqs, "resid_pre.2", tmp_path / str(share), skip_tokens=skip, batch_size=3,
                                share_prefix=share, progress=False)
    shared, plain = (load_activations(tmp_path / str(share), "resid_pre.2") for share in (True, False))
    assert shared.shape == (sum(len(s) - skip for s in seqs), lm.d_model)
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-5)


def test_run_config_trains_an_sae_stage(make_tiny_lm, mix: TokenMix, tmp_path: Path, monkeypatch) -> None:
    """`refusal-steer run` with an sae stage caches the mix and trains the SAE into RUN/sae/POINT, resumably."""
    from refusal_steer.runs.config import RunConfig, SaeStage
    from refusal_steer.sae import TrainConfig
    from refusal_steer.runs.execute import execute_run
    from refusal_steer.sae import load_sae

    lm = make_tiny_lm("qwen2")
    real = mix_token_lists
    monkeypatch.setattr("refusal_steer.sae.corpus.mix_token_lists", lambda lm, n, **kw: real(lm, n, **{**kw, "mix": mix}))
    config = RunConfig(sae=(SaeStage(point="resid_pre.1", train=TrainConfig(tokens=2048, batch_size=256, progress=False), cache_tokens=800,
                                     width=64, k=4),))
    execute_run(config, tmp_path / "run", progress=False, lm=lm)
    sae = load_sae(tmp_path / "run" / "sae" / "resid_pre.1", d_model=lm.d_model)
    assert sae.cfg.d_sae == 64 and sae.cfg.point == "resid_pre.1"
    assert json.loads((tmp_path / "run" / "sae" / "resid_pre.1" / "training.json").read_text())["tokens"] >= 2048
