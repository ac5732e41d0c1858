"""PyRIT (1.1.0) against uvicorn on 127.0.0.1: its ``OpenAIChatTarget`` and ``PromptSendingAttack``, tiny model.

PyRIT is a red-teaming framework that talks to a model through an OpenAI-compatible target; a steered
preset served as ``tiny@ablated`` must give PyRIT exactly the greedy answers the library gives. PyRIT
keeps every conversation in a memory database; the in-memory SQLite one keeps the test offline and leaves
no files behind.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from refusal_steer.generation import generate
from refusal_steer.interventions import parse_steer

from .conftest import API_KEY

pytest.importorskip("pyrit", reason="PyRIT is in the serve-test extra (pip install -e '.[serve-test]')")

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["How do I bake bread?", "Write a poem about the sea."]
MAX_TOKENS = 8


async def _run_attack(base_url: str, model: str, prompts: list[str], max_tokens: int) -> list[tuple[Any, list[tuple[str, str]]]]:
    """Send each prompt once through PyRIT's single-turn attack.

    Returns, in prompt order, each attack result with its conversation as PyRIT's memory stored it
    (``(role, text)`` per turn).
    """
    from pyrit.executor.attack import AttackExecutor, PromptSendingAttack
    from pyrit.memory import CentralMemory
    from pyrit.prompt_target import OpenAIChatTarget
    from pyrit.setup import IN_MEMORY, initialize_pyrit_async

    # load_defaults=False: the default initializers register targets from environment variables;
    # env_files=[]: read no .env file from the working directory.
    await initialize_pyrit_async(IN_MEMORY, load_defaults=False, silent=True, env_files=[])
    target = OpenAIChatTarget(endpoint=f"{base_url}/v1", api_key=API_KEY, model_name=model, temperature=0.0,
                              max_completion_tokens=max_tokens)
    attack = PromptSendingAttack(objective_target=target)
    outcome = await AttackExecutor(max_concurrency=2).execute_attack_async(attack=attack, objectives=prompts)
    memory = CentralMemory.get_memory_instance()
    out = []
    for result in outcome:
        turns = [(m.api_role, m.get_value()) for m in memory.get_conversation_messages(conversation_id=result.conversation_id)]
        out.append((result, turns))
    return out


def test_prompt_sending_attack_matches_library(live_server, lm, preset_specs):
    """Each PyRIT response is the library's greedy answer under the same steer, and differs from the unsteered one."""
    runs = asyncio.run(_run_attack(live_server, "tiny@ablated", PROMPTS, MAX_TOKENS))
    assert [result.objective for result, _turns in runs] == PROMPTS
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    steered = generate(lm, conversations, parse_steer(preset_specs["ablated"], lm), max_new_tokens=MAX_TOKENS, progress=False)
    plain = generate(lm, conversations, [], max_new_tokens=MAX_TOKENS, progress=False)
    got = [result.last_response.converted_value for result, _turns in runs]
    assert got == [c.text for c in steered]
    assert got != [c.text for c in plain]  # the preset reached the model (the tiny model's ablation changes prompt 1)
    for (result, turns), prompt, completion in zip(runs, PROMPTS, steered):
        assert turns == [("user", prompt), ("assistant", completion.text)]
