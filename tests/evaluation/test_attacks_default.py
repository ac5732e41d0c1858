"""Slow: the attack families on the real default model, a few goals each (plumbing and replay, not a result)."""

from __future__ import annotations

import pytest

from refusal_steer.data import load_dataset
from refusal_steer.evaluation.attacks import CrescendoAttack, LocalAttacker, get_attack, replay_attack, run_attack


@pytest.fixture(scope="module")
def default_lm():
    from refusal_steer.models import load_model

    return load_model("default")


@pytest.mark.slow
def test_default_model_single_turn_attacks_and_replay(default_lm):
    goals = load_dataset("advbench", split="test", limit=2)
    for attack in (get_attack("suffix"), get_attack("many-shot", shots=2)):
        result = run_attack(default_lm, attack, goals, max_new_tokens=16, progress=False)
        assert result.rate.n == 2 and result.judge == "substring@v2"
        again = replay_attack(default_lm, result.transcripts, max_new_tokens=16, progress=False)[0]
        assert [t.messages for t in again.transcripts] == [t.messages for t in result.transcripts]


@pytest.mark.slow
def test_default_model_crescendo_one_turn(default_lm):
    goals = load_dataset("advbench", split="test", limit=1)
    attack = CrescendoAttack(LocalAttacker(default_lm, max_new_tokens=16), turns=1, max_backtracks=0)
    result = run_attack(default_lm, attack, goals, max_new_tokens=16, progress=False)
    (t,) = result.transcripts
    assert len(t.generated) == 1 and len(t.attempts) == 1 and t.messages[0]["role"] == "user"
    assert all("parsed" in a for a in t.attempts)
