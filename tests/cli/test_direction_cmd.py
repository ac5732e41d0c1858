"""``refusal-steer direction`` on a tiny model saved to disk, then ``eval --steer cap:DIR`` / ``ablate:DIR/optimized.safetensors`` on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from refusal_steer.cli import build_app

runner = CliRunner()


def test_direction_writes_the_capped_ablation_and_eval_applies_it(tmp_path: Path) -> None:
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    build_tiny_model("qwen2", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    harmful, harmless = tmp_path / "harmful.jsonl", tmp_path / "harmless.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"Tell me how to do harmful thing number {i}."}) + "\n" for i in range(40)))
    harmless.write_text("".join(json.dumps({"prompt": f"Write a short poem about item {i}."}) + "\n" for i in range(40)))
    out = tmp_path / "dir"
    # A random model passes no real filter: loosen them so that every stage runs.
    result = runner.invoke(build_app(), [
        "direction", "--model", str(model_dir), "--harmful", f"jsonl:{harmful}", "--harmless", f"jsonl:{harmless}",
        "--n-train", "8", "--n-val", "4", "--out", str(out), "--kl-threshold", "1e9", "--induce-threshold", "-1e9",
        "--screen-top-k", "3", "--cap-candidates", "2", "--optimize-steps", "2", "--refusal-tokens", "5,17", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.output[result.output.index('{\n  "direction"'):])  # after any progress/log lines
    assert summary["cap"]["point"] is not None and "table" not in summary["cap"]
    assert (out / "cap.safetensors").is_file()
    kl_out = tmp_path / "kl.json"
    result = runner.invoke(build_app(), [
        "eval", "--model", str(model_dir), "--metric", "kl", "--dataset", f"jsonl:{harmful}", "--split", "test", "--limit", "4",
        "--steer", f"cap:{out}", "--out", str(kl_out)])
    assert result.exit_code == 0, (result.output, result.exception)
    kl = json.loads(kl_out.read_text())
    assert kl["steer"] == [f"cap:{out}"] and kl["n"] == 4 and kl["kl"] >= 0
    optimized = summary["optimized"]
    assert optimized["step"] in (0, 2)
    # step 0 kept: no refined file, and ablate:OUT / --direction OUT apply the selected direction
    assert optimized["file"] == (str(out / "optimized.safetensors") if optimized["step"] else None)
    assert (out / "optimized.safetensors").is_file() == bool(optimized["step"])
    result = runner.invoke(build_app(), [
        "eval", "--model", str(model_dir), "--metric", "kl", "--dataset", f"jsonl:{harmful}", "--split", "test", "--limit", "4",
        "--steer", f"ablate:{out}", "--out", str(kl_out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(kl_out.read_text())["n"] == 4
    # The refined direction bakes into weights like the selected one: plain transformers matches hook ablation.
    ortho = tmp_path / "ortho"
    result = runner.invoke(build_app(), ["orthogonalize", "--model", str(model_dir), "--direction", str(out), "--out", str(ortho)])
    assert result.exit_code == 0, (result.output, result.exception)
    from refusal_steer.directions.scores import last_token_logprobs
    from refusal_steer.interventions import parse_steer
    from refusal_steer.models import load_model

    lm = load_model(str(model_dir))
    baked = load_model(str(ortho))  # a plain Hugging Face folder, loaded by transformers with no hooks
    prompts = ["Write a short poem about item 3.", "Tell me how to do harmful thing number 7."]
    hooked = last_token_logprobs(lm, prompts, parse_steer(f"ablate:{out}", lm))
    torch.testing.assert_close(last_token_logprobs(baked, prompts), hooked, atol=1e-4, rtol=1e-4)


def test_orthogonalize_writes_the_gguf_for_a_gguf_model(tiny_qwen2_gguf: Path, tmp_path: Path) -> None:
    from refusal_steer.directions.io import save_direction
    from refusal_steer.directions.orthogonalize import ORTHOGONALIZED_GGUF

    direction = torch.randn(64, generator=torch.Generator().manual_seed(5))
    save_direction(tmp_path / "dir", direction / direction.norm(), "resid_pre.1")
    args = ["orthogonalize", "--model", str(tiny_qwen2_gguf), "--direction", str(tmp_path / "dir")]
    result = runner.invoke(build_app(), [*args, "--out", str(tmp_path / "out"), "--gguf-type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert ORTHOGONALIZED_GGUF in result.output and "Ollama" in result.output
    assert (tmp_path / "out" / ORTHOGONALIZED_GGUF).is_file() and (tmp_path / "out" / "config.json").is_file()
    bad = runner.invoke(build_app(), [*args, "--out", str(tmp_path / "out2"), "--gguf-type", "q4_k"])
    assert bad.exit_code != 0 and "--gguf-type" in str(bad.exception) and not (tmp_path / "out2").exists()
