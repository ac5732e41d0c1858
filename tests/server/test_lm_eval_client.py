"""lm-evaluation-harness (``local-completions``) against uvicorn on 127.0.0.1: MMLU accuracy under a steer.

A harness user points ``local-completions`` at ``/v1/completions`` with a model name ``BASE@PRESET``; its
multiple-choice accuracy must be the accuracy the library's own :func:`evaluate_multiple_choice` gives on
the same questions, or the server is not serving what the library measures. The task is written here
(YAML + a JSONL of documents in a temporary folder, loaded through ``TaskManager(include_path=...)``):
each document's context is the library's chat-templated prompt ending in ``Answer:``, the choices are
`` A``, `` B``... and ``target_delimiter`` is empty, so the harness scores exactly the continuations the
library scores. The tokenizer is ``tokenizer_backend=remote`` (the server's ``/tokenizer_info`` and
``/tokenize``), so nothing but 127.0.0.1 is read; datasets and hub are forced offline.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from refusal_steer.data import load_dataset
from refusal_steer.evaluation.capability import (ANSWER_PREFILL, LETTERS, evaluate_multiple_choice, mc_user_message,
                                                 stratified_subset)
from refusal_steer.interventions import parse_steer
from refusal_steer.models.chat import format_chat, tokenize_exact

from .conftest import API_KEY

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is in the serve-test extra (pip install -e '.[serve-test]')")

TASK = "refusal_steer_mc"
DIRECTION = Path(__file__).resolve().parents[2] / "docs" / "measured" / "2026-12-02" / "direction"


def mc_context(tokenizer: Any, question: Any) -> str:
    """The text the library scores a question's answer letters after (see :func:`evaluate_multiple_choice`)."""
    return format_chat(tokenizer, mc_user_message(question.question, question.choices, question.subject), system=None) + ANSWER_PREFILL


def write_task(folder: Path, tokenizer: Any, questions: Sequence[Any]) -> Path:
    """A ``multiple_choice`` lm-eval task over ``questions`` in ``folder`` (YAML + JSONL); returns the folder.

    The context is a document field (``doc_to_text: context``), so no template re-renders it; the
    choices are `` A``... with an empty ``target_delimiter``, so the continuation is exactly `` A``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "questions.jsonl"
    with data.open("w") as f:
        for q in questions:
            letters = [f" {LETTERS[i]}" for i in range(len(q.choices))]
            f.write(json.dumps({"id": q.id, "context": mc_context(tokenizer, q), "letters": letters, "answer": q.answer}) + "\n")
    config = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "hf_cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "letters",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / f"{TASK}.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    return folder


def lm_eval_model_args(base_url: str, model: str, *, batch_size: int = 1) -> dict[str, Any]:
    """``local-completions`` arguments for this server: token-id requests, the server's own tokenizer."""
    return {"base_url": f"{base_url}/v1/completions", "model": model, "tokenizer_backend": "remote",
            "tokenized_requests": True, "auth_token": API_KEY, "num_concurrent": 1, "max_retries": 1,
            "batch_size": batch_size, "max_length": 4096}


def run_lm_eval(base_url: str, model: str, task_folder: Path, *, batch_size: int = 1) -> tuple[float, dict[str, list[float]]]:
    """Run the task through ``lm_eval.simple_evaluate``; its accuracy and each question's option log-likelihoods by id."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model="local-completions", model_args=lm_eval_model_args(base_url, model, batch_size=batch_size),
                          tasks=[TASK], task_manager=TaskManager(include_path=str(task_folder), include_defaults=False),
                          log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                          fewshot_random_seed=0)
    accuracy = out["results"][TASK]["acc,none"]
    scores = {s["doc"]["id"]: [float(r[0]) for r in s["filtered_resps"]] for s in out["samples"][TASK]}
    return accuracy, scores


@pytest.fixture
def offline(monkeypatch):
    """The API key lm-eval's ``local-completions`` sends (it reads ``OPENAI_API_KEY``); hub and datasets offline."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    import datasets.config
    import huggingface_hub.constants

    # The libraries read these variables once, at import; set their copies too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


def _short_mmlu(lm: Any, n: int) -> list[Any]:
    """``n`` pinned MMLU questions whose chat-templated context fits the tiny model's 256-token window."""
    pool = load_dataset("mmlu", subjects=["abstract_algebra", "high_school_mathematics", "us_foreign_policy"])
    window = lm.model.config.max_position_embeddings
    # + a two-token letter (" B" is two tokens here) + the one token lm-eval asks to generate.
    short = [q for q in pool if len(tokenize_exact(lm.tokenizer, mc_context(lm.tokenizer, q))) + 3 <= window]
    assert len(short) >= n, f"only {len(short)} short questions"
    return stratified_subset(short, n, seed=0)


def _compare(project: Any, accuracy: float, scores: dict[str, list[float]], *, atol: float) -> float:
    """Accuracy within 0.001, the same predicted letter per question and the same option log-likelihoods.

    Returns the largest log-likelihood difference.
    """
    assert abs(accuracy - project.accuracy.value) <= 0.001
    assert sorted(scores) == sorted(item["id"] for item in project.items)
    for item in project.items:
        theirs = scores[item["id"]]
        assert LETTERS[max(range(len(theirs)), key=theirs.__getitem__)] == item["predicted"], item["id"]
        assert theirs == pytest.approx(item["logprobs"], abs=atol), item["id"]
    return max(abs(a - b) for item in project.items for a, b in zip(scores[item["id"]], item["logprobs"]))


def _check_token_boundaries(base_url: str, model: str, tokenizer: Any, questions: Sequence[Any]) -> None:
    """lm-eval's split of each (context, letter) pair is the library's ``tokenize_exact(context)`` + ``tokenize_exact(" A")``."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    client = LocalCompletionsAPI(**lm_eval_model_args(base_url, model))
    for q in questions:
        context = mc_context(tokenizer, q)
        for letter in LETTERS[: len(q.choices)]:
            context_ids, continuation_ids = client._encode_pair(context, f" {letter}")
            assert context_ids == tokenize_exact(tokenizer, context)
            assert continuation_ids == tokenize_exact(tokenizer, f" {letter}")


@pytest.mark.usefixtures("one_thread")
def test_token_boundaries_match_the_library(live_server, lm, offline):
    """lm-eval encodes context + continuation and cuts at the context's length; that gives the library's tokens
    (here " B" is two tokens of the tiny vocabulary, " A" one)."""
    _check_token_boundaries(live_server, "tiny@ablated", lm.tokenizer, _short_mmlu(lm, 3))


@pytest.mark.usefixtures("one_thread")
def test_lm_eval_mmlu_accuracy_matches_library(live_server, lm, preset_specs, tmp_path, offline):
    """lm-eval's accuracy and per-question predictions on ``tiny@ablated`` equal :func:`evaluate_multiple_choice`'s."""
    questions = _short_mmlu(lm, 8)
    accuracy, scores = run_lm_eval(live_server, "tiny@ablated", write_task(tmp_path / "task", lm.tokenizer, questions))
    project = evaluate_multiple_choice(lm, questions, parse_steer(preset_specs["ablated"], lm), progress=False)
    _compare(project, accuracy, scores, atol=1e-4)
    # The steer reached the model: unsteered log-likelihoods differ.
    plain = evaluate_multiple_choice(lm, questions, [], progress=False)
    assert any(not math.isclose(a, b, abs_tol=1e-4) for item, base in zip(project.items, plain.items)
               for a, b in zip(item["logprobs"], base["logprobs"]))


@pytest.mark.slow
def test_lm_eval_mmlu_on_default_model(tmp_path, offline):
    """The default model with the measured refusal direction ablated: lm-eval's MMLU accuracy equals the library's (40 questions)."""
    from refusal_steer.models import load_model
    from refusal_steer.server import ServerConfig, create_app, load_presets

    from .conftest import serve_in_thread

    lm = load_model("default")
    spec = f"ablate:{DIRECTION}"
    questions = stratified_subset(load_dataset("mmlu"), 40, seed=0)
    app = create_app(lm, load_presets(lm, [f"ablated={spec}"]), ServerConfig(api_key=API_KEY, max_wait_ms=20), model_id="default")
    started = time.monotonic()
    with serve_in_thread(app) as url:
        _check_token_boundaries(url, "default@ablated", lm.tokenizer, questions[:3])
        accuracy, scores = run_lm_eval(url, "default@ablated", write_task(tmp_path / "task", lm.tokenizer, questions), batch_size=4)
    lm_eval_s = time.monotonic() - started
    started = time.monotonic()
    project = evaluate_multiple_choice(lm, questions, parse_steer(spec, lm), progress=False)
    project_s = time.monotonic() - started
    largest = _compare(project, accuracy, scores, atol=1e-3)
    print(f"\nlm-eval acc {accuracy:.4f} ({lm_eval_s:.0f} s), library acc {project.accuracy.value:.4f} ({project_s:.0f} s), "
          f"n={len(questions)}, largest log-likelihood difference {largest:.2e}")
