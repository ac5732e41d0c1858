"""Steer files round-trip (YAML and JSON, vectors in safetensors) and the CLI short forms."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.directions.io import load_direction, save_direction
from refusal_steer.errors import ConfigError, ShapeMismatchError
from refusal_steer.interventions import Ablate, Add, SetProjection, load_steer_file, parse_steer, residual_writes, save_steer_file


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_steer_file_round_trip(tmp_path, suffix):
    items = [
        Ablate(torch.randn(8), ["resid_pre.0", "mlp_out.1"], positions="generated"),
        Add(torch.randn(8) * 3, "resid_pre.1", coef=-1.5, positions=[-1, -2]),
        SetProjection(torch.randn(8), "attn_out.0", value=2.0),
    ]
    path = save_steer_file(tmp_path / f"steer{suffix}", items)
    assert (tmp_path / "steer.safetensors").is_file()
    loaded = load_steer_file(path)
    assert [type(i) for i in loaded] == [Ablate, Add, SetProjection]
    for before, after in zip(items, loaded):
        assert before.points == after.points and before.positions == after.positions
    assert torch.equal(loaded[0].direction, items[0].direction)
    assert torch.equal(loaded[1].vector, items[1].vector) and loaded[1].coef == -1.5
    assert loaded[2].value == 2.0


def test_steer_file_errors_name_the_entry(tmp_path):
    path = tmp_path / "steer.yaml"
    path.write_text("interventions:\n  - kind: clampz\n")
    with pytest.raises(ConfigError, match="unknown intervention kind"):
        load_steer_file(path)
    path.write_text("interventions:\n  - kind: add\n    vector: t0\n    point: resid_pre.0\n    strength: 2\n")
    with pytest.raises(ConfigError, match="unknown field"):
        load_steer_file(path)


def test_short_forms(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    vector = torch.randn(lm.d_model) * 7
    save_direction(tmp_path / "dir", vector, "resid_pre.2", model=lm.spec)
    saved = load_direction(tmp_path / "dir")
    assert saved.layer == 2 and torch.equal(saved.direction, vector)
    (ablate,) = parse_steer(f"ablate:{tmp_path / 'dir'}", lm)
    assert ablate.points == residual_writes(lm)
    (add,) = parse_steer(f"actadd:{tmp_path / 'dir'}:-2", lm)
    assert add.coef == -2.0 and str(add.point) == "resid_pre.2" and torch.equal(add.vector, vector)
    (add,) = parse_steer(f"actadd:{tmp_path / 'dir'}", lm)
    assert add.coef == 1.0 and add.positions == "all"  # a file without actadd_positions: every token, as before


def test_actadd_short_form_uses_the_recorded_coefficient_and_positions(tmp_path, make_tiny_lm):
    """actadd:DIR adds at the positions selection recorded; an explicit COEF overrides only the coefficient."""
    from refusal_steer.generation import generate

    lm = make_tiny_lm("qwen2")
    vector = torch.randn(lm.d_model) * 5
    save_direction(tmp_path / "dir", vector, "resid_pre.1", actadd_coef=2.5, actadd_positions="prompt")
    (add,) = parse_steer(f"actadd:{tmp_path / 'dir'}", lm)
    assert add.coef == 2.5 and add.positions == "prompt"
    (add,) = parse_steer(f"actadd:{tmp_path / 'dir'}:-1", lm)
    assert add.coef == -1.0 and add.positions == "prompt"
    # Prompt-only addition changes the first answer token exactly as adding everywhere does, and nothing after it.
    everywhere = Add(vector, "resid_pre.1", coef=2.5)
    runs = {name: generate(lm, ["Say hi."], steer, max_new_tokens=6, progress=False)[0].token_ids
            for name, steer in [("prompt", [parse_steer(f"actadd:{tmp_path / 'dir'}", lm)[0]]), ("all", [everywhere]), ("none", [])]}
    assert runs["prompt"][0] == runs["all"][0]
    assert runs["prompt"] != runs["all"]


def test_short_forms_fail_before_forward(tmp_path, make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    save_direction(tmp_path / "wide", torch.randn(lm.d_model + 1), "resid_pre.0")
    with pytest.raises(ShapeMismatchError):
        parse_steer(f"ablate:{tmp_path / 'wide'}", lm)
    with pytest.raises(ConfigError, match="no saved direction"):
        parse_steer(f"actadd:{tmp_path / 'missing'}", lm)
    with pytest.raises(ConfigError, match="cannot read --steer"):
        parse_steer("capped:whatever", lm)
    with pytest.raises(ConfigError, match="no capped ablation"):
        parse_steer(f"clamp:{tmp_path / 'missing'}", lm)
