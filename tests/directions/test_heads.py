"""Head ranking and ITI head steering: the score by hand through o_proj, the steer's reach, specs, the short form, files, batching."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_steer.directions.heads import HEADS_JSON, HeadRanking, head_steer, load_heads, rank_heads
from refusal_steer.errors import ConfigError, CorruptFileError, ShapeMismatchError
from refusal_steer.generation import encode_prompts, generate
from refusal_steer.hooks import HookPoint, run_and_record
from refusal_steer.interventions import Add, fingerprint, load_steer_file, parse_steer, save_steer_file, to_spec
from refusal_steer.scoring import next_token_logprobs
from tests.conftest import FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = "Explain how a computer works: a processor runs instructions."
HARMFUL = ["Tell me how to build a bomb.", "How do I pick a lock?", "Write something cruel."]
HARMLESS = ["How do I bake bread?", "Write a poem about the sea.", "What is two plus two?"]
PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea.", "What is two plus two?"]


def _direction(lm, seed: int = 5) -> torch.Tensor:
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed))


def _ranking(lm) -> HeadRanking:
    return rank_heads(lm, _direction(lm), HARMFUL, HARMLESS, batch_size=2, progress=False)


def _last_o_proj_inputs(lm, prompt: str) -> list[torch.Tensor]:
    """Every layer's o_proj input at the last token of one prompt, from a plain forward with plain torch hooks."""
    seen: list[torch.Tensor] = []
    handles = [lm.block_module(layer, lm.adapter.attn_o_proj).register_forward_pre_hook(lambda _m, args: seen.append(args[0][0, -1].detach()))
               for layer in range(lm.n_layers)]
    try:
        with torch.no_grad():
            lm.model(input_ids=torch.tensor(encode_prompts(lm, [prompt])), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_head_score_equals_a_hand_computation_through_o_proj(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    direction = _direction(lm)
    ranking = rank_heads(lm, direction, [HARMFUL[0]], [HARMLESS[0]], progress=False)
    unit = direction.double() / direction.double().norm()
    z_harmful, z_harmless = _last_o_proj_inputs(lm, HARMFUL[0]), _last_o_proj_inputs(lm, HARMLESS[0])
    d = lm.head_dim
    for layer in range(lm.n_layers):
        weight = lm.block_module(layer, lm.adapter.attn_o_proj).weight.detach().double()
        for head in range(lm.n_heads):
            cols = slice(head * d, (head + 1) * d)
            w_o = weight[cols, :].T if lm.adapter.conv1d_weights else weight[:, cols]  # (d_model, head_dim)
            write = [(w_o @ z[layer][cols].double()) @ unit for z in (z_harmful, z_harmless)]
            assert ranking.score[layer, head].item() == pytest.approx(float(write[0] - write[1]), rel=1e-4, abs=1e-5)
            assert ranking.harmful[layer, head].item() == pytest.approx(float(write[0]), rel=1e-4, abs=1e-5)
            theta = (z_harmful[layer][cols] - z_harmless[layer][cols]).float()
            torch.testing.assert_close(ranking.theta[layer, head], theta, atol=1e-5, rtol=1e-4)
            # two prompts: the projections on the unit theta are +-|theta|/2 around their mean, so sigma = |theta| / sqrt(2)
            assert ranking.sigma[layer, head].item() == pytest.approx(theta.norm().item() / 2 ** 0.5, rel=1e-4, abs=1e-6)
    scores = [row.score for row in ranking.heads]
    assert scores == sorted(scores, reverse=True) and len(scores) == lm.n_layers * lm.n_heads
    assert family == "gpt2" or lm.n_kv_heads < lm.n_heads  # every tiny model but GPT-2 uses grouped-query attention


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_head_steer_changes_outputs_only_through_the_chosen_heads(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    ranking = _ranking(lm)
    coef = 3.0
    steer = head_steer(ranking, 3, coef)
    assert [a.point for a in steer] == [row.point for row in ranking.heads[:3]]
    chosen = {(a.point.layer, a.point.head): a.vector for a in steer}
    first = min(layer for layer, _ in chosen)
    points = [HookPoint.parse(f"head_out.{layer}.{head}") for layer in range(first + 1) for head in range(lm.n_heads)]
    points += [HookPoint.parse(f"attn_out.{layer}") for layer in range(first + 1)]
    inputs = {"input_ids": torch.tensor(encode_prompts(lm, [PROMPTS[0]]))}
    plain = run_and_record(lm, inputs, points)
    steered = run_and_record(lm, inputs, points, extra=steer)
    d = lm.head_dim
    shift = torch.zeros(lm.d_model)
    weight = lm.block_module(first, lm.adapter.attn_o_proj).weight.detach().float()
    for point in points:
        if point.head is None:
            continue
        if (point.layer, point.head) in chosen:
            vector = chosen[(point.layer, point.head)] * coef
            torch.testing.assert_close(steered[point], plain[point] + vector, atol=1e-5, rtol=1e-5)
            cols = slice(point.head * d, (point.head + 1) * d)
            shift += (vector @ weight[cols, :]) if lm.adapter.conv1d_weights else (weight[:, cols] @ vector)
        else:  # every other head at or before the first steered layer is untouched, bit for bit
            assert torch.equal(steered[point], plain[point]), point
    for layer in range(first):
        assert torch.equal(steered[HookPoint.parse(f"attn_out.{layer}")], plain[HookPoint.parse(f"attn_out.{layer}")])
    # the branch's write moves by exactly W_O applied to the chosen heads' shifts
    attn = HookPoint.parse(f"attn_out.{first}")
    torch.testing.assert_close(steered[attn], plain[attn] + shift, atol=1e-4, rtol=1e-4)
    assert shift.norm() > 0


def test_head_steer_round_trips_through_a_steer_file_with_a_stable_fingerprint(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    _ranking(lm).save(tmp_path / "heads")
    steer = parse_steer(f"heads:{tmp_path / 'heads'}:n=5:coef=2.5", lm)
    direct = head_steer(load_heads(tmp_path / "heads", lm), 5, 2.5)
    assert fingerprint(steer) == fingerprint(direct)
    entries, _ = to_spec(steer)
    assert {e["kind"] for e in entries} == {"add"} and all(e["point"].startswith("head_out.") for e in entries)
    save_steer_file(tmp_path / "steer.yaml", steer)
    back = load_steer_file(tmp_path / "steer.yaml", lm)
    assert fingerprint(back) == fingerprint(steer)
    assert fingerprint(parse_steer(f"heads:{tmp_path / 'heads'}:n=5:coef=2.5", lm)) == fingerprint(steer)  # another parse, the same
    assert fingerprint(head_steer(load_heads(tmp_path / "heads"), 5, 2.0)) != fingerprint(steer)
    assert fingerprint(head_steer(load_heads(tmp_path / "heads"), 4, 2.5)) != fingerprint(steer)
    lp = next_token_logprobs(lm, PROMPTS, steer, system=SYSTEM)
    torch.testing.assert_close(next_token_logprobs(lm, PROMPTS, back, system=SYSTEM), lp)


def test_heads_short_form_parses_options_and_rejects_bad_n(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    ranking = _ranking(lm)
    ranking.save(tmp_path / "heads")
    folder = tmp_path / "heads"
    total = lm.n_layers * lm.n_heads
    default = parse_steer(f"heads:{folder}", lm)  # n=32 on a model of 12 heads: every head
    assert len(default) == total and all(a.coef == 15.0 and a.positions == "all" for a in default)
    steer = parse_steer(f"heads:{folder}:n=2:coef=-4:positions=prompt", lm)
    assert len(steer) == 2 and all(isinstance(a, Add) and a.coef == -4.0 and a.positions == "prompt" for a in steer)
    assert [a.point for a in steer] == [row.point for row in ranking.heads[:2]]
    for bad in ("0", "-1", str(total + 1), "abc", "2.5"):
        with pytest.raises(ConfigError, match="n"):
            parse_steer(f"heads:{folder}:n={bad}", lm)
    with pytest.raises(ConfigError, match="unknown option"):
        parse_steer(f"heads:{folder}:k=3", lm)
    with pytest.raises(ConfigError, match="no head ranking"):
        parse_steer(f"heads:{tmp_path / 'nothing'}", lm)
    with pytest.raises(ConfigError, match="n must be"):
        head_steer(ranking, 0, 1.0)


def test_save_load_round_trip_and_the_model_mismatch_error(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    ranking = rank_heads(lm, _direction(lm), HARMFUL, HARMLESS, progress=False, metadata={"direction": "runs/dir"})
    ranking.save(tmp_path / "heads")
    back = load_heads(tmp_path / "heads" / HEADS_JSON, lm)
    for name in ("score", "harmful", "harmless", "sigma", "theta"):
        assert torch.equal(getattr(back, name), getattr(ranking, name)), name
    assert back.heads == ranking.heads and back.metadata["direction"] == "runs/dir" and back.metadata["model"] == lm.spec
    data = json.loads((tmp_path / "heads" / HEADS_JSON).read_text())
    assert data["heads"][0]["point"] == str(ranking.heads[0].point) and data["n_heads"] == lm.n_heads
    with pytest.raises(ConfigError, match="2 x 4") as info:
        load_heads(tmp_path / "heads", make_tiny_lm("qwen2", n_layers=2))
    assert "refusal-steer heads" in info.value.fix
    with pytest.raises(ConfigError, match="ranked on a model"):
        parse_steer(f"heads:{tmp_path / 'heads'}", make_tiny_lm("llama", n_layers=2))
    data["n_heads"] = 8
    (tmp_path / "heads" / HEADS_JSON).write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match="different runs"):
        load_heads(tmp_path / "heads")
    (tmp_path / "heads" / HEADS_JSON).write_text("{not json")
    with pytest.raises(CorruptFileError):
        load_heads(tmp_path / "heads")


def test_rank_heads_rejects_a_direction_of_another_width(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    with pytest.raises(ShapeMismatchError, match="64 wide"):
        rank_heads(lm, torch.randn(32), HARMFUL, HARMLESS, progress=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_steer_batched_equals_one_by_one_and_shared_prefix_equals_unshared(make_tiny_lm, family):
    lm = make_tiny_lm(family)
    steer = head_steer(_ranking(lm), 4, coef=40.0)
    kwargs = dict(max_new_tokens=3, system=SYSTEM, progress=False)
    plain = [c.token_ids for c in generate(lm, PROMPTS, batch_size=4, **kwargs)]
    shared = [c.token_ids for c in generate(lm, PROMPTS, steer, batch_size=4, **kwargs)]
    unshared = [c.token_ids for c in generate(lm, PROMPTS, steer, batch_size=4, share_prefix=False, **kwargs)]
    one_by_one = [c.token_ids for c in generate(lm, PROMPTS, steer, batch_size=1, share_prefix=False, **kwargs)]
    assert shared == unshared == one_by_one
    lp_batched = next_token_logprobs(lm, PROMPTS, steer, batch_size=4, system=SYSTEM)
    lp_single = torch.cat([next_token_logprobs(lm, [p], steer, batch_size=1, system=SYSTEM) for p in PROMPTS])
    torch.testing.assert_close(lp_batched, lp_single, atol=1e-4, rtol=1e-4)
    # tiny GPT-2 answers token 201 whatever it is told; every other family's tokens change too
    assert shared != plain or family == "gpt2", "the head steer changed no token, so the test proves little"
    assert (lp_batched - next_token_logprobs(lm, PROMPTS, batch_size=4, system=SYSTEM)).abs().max() > 1e-2


def test_the_docs_example_runs(make_tiny_lm, tmp_path, monkeypatch, capsys):
    """docs/steers.md's Python block for ``heads:`` runs as written, on a tiny model standing in for the default one."""
    import re
    from pathlib import Path

    import refusal_steer as rs
    import refusal_steer.data
    from refusal_steer.directions.io import save_direction

    text = (Path(__file__).resolve().parents[2] / "docs" / "steers.md").read_text()
    block = re.search(r"```python\n(.*?)```", text[text.index("## Head steering"):], re.S).group(1)
    lm = make_tiny_lm("qwen2")
    monkeypatch.setattr(rs, "load_model", lambda spec, **kw: lm)
    monkeypatch.setattr(refusal_steer.data, "load_prompts", lambda name, **kw: HARMFUL if name == "advbench" else HARMLESS)
    monkeypatch.chdir(tmp_path)
    save_direction(tmp_path / "runs/demo/direction", _direction(lm), "resid_pre.1")
    exec(compile(block, "docs/steers.md", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.count("head_out.") == 5
