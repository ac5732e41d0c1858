"""The steer language: every registered kind round-trips through a steer file with the same fingerprint and output;
bad specs fail with one readable error naming the field; short forms are registered resolvers."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from refusal_steer.errors import ConfigError, HookPointError, RefusalSteerError, ShapeMismatchError
from refusal_steer.generation import generate
from refusal_steer.interventions import (
    Ablate,
    Add,
    Cosine,
    Gate,
    Probe,
    Projection,
    ProjectionCap,
    SetProjection,
    conditions,
    fingerprint,
    kinds,
    load_steer_file,
    parse_steer,
    register_kind,
    register_short_form,
    save_steer_file,
    short_forms,
)
from refusal_steer.interventions.registry import FieldSpec, ShortForm
from refusal_steer.sae import LatentAdd, LatentClamp, SaeLatent, SaeSplice, TopKConfig, build_sae, save_sae

PROMPTS = ["How do I bake bread?", "Hi there, tell me a story."]


def _v(lm, seed, scale=3.0):
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed)) * scale


def _sae(lm, tmp_path):
    torch.manual_seed(3)
    sae = build_sae(TopKConfig(d_in=lm.d_model, d_sae=32, k=4, point="resid_pre.1"))
    save_sae(sae, tmp_path / "sae")
    from refusal_steer.sae import load_sae

    return load_sae(tmp_path / "sae", d_model=lm.d_model)


def _one_of_each(lm, tmp_path) -> dict[str, list]:
    """One steer per registered kind (the test below fails if a kind is registered without an example here)."""
    return {
        "ablate": [Ablate(_v(lm, 1), ["resid_pre.1", "attn_out.1", "mlp_out.2"], positions="prompt")],
        "add": [Add(_v(lm, 2), "resid_pre.1", coef=-2.5, positions=(-1, -2))],
        "set_projection": [SetProjection(_v(lm, 3), "resid_pre.2", value=4.0)],
        "cap": [ProjectionCap(_v(lm, 4), ["resid_pre.0", "resid_pre.1"], ceilings=[0.1, -0.3], positions="generated")],
        "gate": [  # one gate per registered condition (the test below checks every condition is here), each firing on every row
            Gate(Projection(_v(lm, 5)), "resid_pre.1", threshold=-1e6, steer=[Add(_v(lm, 6, 8.0), "resid_pre.2", coef=1.0)]),
            Gate(Cosine(_v(lm, 5)), "resid_pre.1", threshold=-1.0, reduce="mean", skip_tokens=2,
                 steer=[Ablate(_v(lm, 1), ["resid_pre.0", "mlp_out.2"], positions="generated")]),
            Gate(Probe(_v(lm, 7), bias=-0.5), "resid_pre.2", threshold=0.0, reduce="max", invert=True,
                 steer=[Gate(Cosine(_v(lm, 8)), "resid_pre.2", threshold=-1.0, steer=[SetProjection(_v(lm, 3), "resid_pre.2", value=-6.0)])]),
            Gate(SaeLatent(_sae(lm, tmp_path), latent=1), "resid_pre.1", threshold=-1.0, reduce="max",
                 steer=[LatentAdd(_sae(lm, tmp_path), "resid_pre.1", latent=3, max_activation=10.0, coef=-4.0)]),
        ],
        "sae_splice": [SaeSplice(_sae(lm, tmp_path), "resid_pre.1", keep_error=False, skip_tokens=2)],
        "latent_clamp": [LatentClamp(_sae(lm, tmp_path), "resid_pre.1", latents=tuple(range(32)), mode="set", value=40.0, skip_tokens=2)],
        "latent_add": [LatentAdd(_sae(lm, tmp_path), "resid_pre.1", latent=3, max_activation=10.0, coef=4.0)],
    }


def test_every_kind_saves_loads_and_keeps_its_fingerprint_and_output(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    examples = _one_of_each(lm, tmp_path)
    assert sorted(examples) == sorted(kinds()), "every registered kind needs a round-trip example"
    assert sorted(type(g.condition).kind for g in examples["gate"]) == sorted(conditions()), "every registered condition needs a gate example"
    base = [c.token_ids for c in generate(lm, PROMPTS, max_new_tokens=4, progress=False)]
    for name, steer in examples.items():
        for suffix in (".yaml", ".json"):
            path = save_steer_file(tmp_path / f"{name}{suffix}", steer)
            loaded = load_steer_file(path, lm)
            assert [type(i) for i in loaded] == [type(i) for i in steer]
            assert fingerprint(loaded) == fingerprint(steer), name
            if name == "gate":  # each gate alone too: its condition's fields reach the fingerprint
                for one, back in zip(steer, loaded):
                    assert fingerprint([back]) == fingerprint([one]) and type(back.condition) is type(one.condition)
        before = [c.token_ids for c in generate(lm, PROMPTS, steer, max_new_tokens=4, progress=False)]
        after = [c.token_ids for c in generate(lm, PROMPTS, loaded, max_new_tokens=4, progress=False)]
        assert before == after, name
        if name not in ("sae_splice",):  # a tiny SAE spliced with keep_error=False need not change greedy tokens
            logits_changed = before != base or name == "cap"
            assert logits_changed, f"{name} changed nothing: the test would prove nothing"


def test_fingerprint_is_stable_across_processes(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    steer = [Add(_v(lm, 2), "resid_pre.1", coef=2.0), Ablate(_v(lm, 1), ["resid_pre.0"])]
    path = save_steer_file(tmp_path / "steer.yaml", steer)
    code = ("from refusal_steer.interventions import load_steer_file, fingerprint; "
            f"print(fingerprint(load_steer_file({str(path)!r})))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == fingerprint(steer) and len(other) == 16


def test_fingerprint_changes_with_every_field(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    v = _v(lm, 2)
    base = fingerprint([Add(v, "resid_pre.1", coef=2.0)])
    variants = [
        [Add(v, "resid_pre.1", coef=2.5)],                        # a number
        [Add(v * 1.001, "resid_pre.1", coef=2.0)],                # a tensor
        [Add(v, "resid_pre.2", coef=2.0)],                        # a point
        [Add(v, "resid_pre.1", coef=2.0, positions="prompt")],    # positions
        [Add(v, "resid_pre.1", coef=2.0), Add(v, "resid_pre.1")],  # another intervention
        [],                                                       # none
    ]
    prints = {fingerprint(s) for s in variants}
    assert base not in prints and len(prints) == len(variants)
    assert fingerprint([Add(v.clone(), "resid_pre.1", coef=2.0)]) == base
    assert fingerprint([]) == fingerprint(())
    sae = _sae(lm, tmp_path)
    other = build_sae(TopKConfig(d_in=lm.d_model, d_sae=32, k=4, point="resid_pre.1"))
    assert fingerprint([SaeSplice(sae, "resid_pre.1")]) != fingerprint([SaeSplice(other, "resid_pre.1")])  # resource content
    add = Add(v, "resid_pre.2")
    gates = [
        Gate(Projection(v), "resid_pre.1", threshold=1.0, steer=[add]),
        Gate(Cosine(v), "resid_pre.1", threshold=1.0, steer=[add]),                 # the condition's kind
        Gate(Projection(v * -1), "resid_pre.1", threshold=1.0, steer=[add]),        # the condition's tensor
        Gate(Projection(v), "resid_pre.1", threshold=1.5, steer=[add]),             # the threshold
        Gate(Projection(v), "resid_pre.1", threshold=1.0, steer=[add], reduce="max"),
        Gate(Projection(v), "resid_pre.1", threshold=1.0, steer=[add], invert=True),
        Gate(Projection(v), "resid_pre.1", threshold=1.0, steer=[add], skip_tokens=3),
        Gate(Projection(v), "resid_pre.1", threshold=1.0, steer=[Add(v, "resid_pre.2", coef=2.0)]),  # the nested steer
        Gate(Probe(v, bias=0.5), "resid_pre.1", threshold=1.0, steer=[add]),
        Gate(Probe(v, bias=0.25), "resid_pre.1", threshold=1.0, steer=[add]),
        Gate(SaeLatent(sae, latent=1), "resid_pre.1", threshold=1.0, steer=[add]),
        Gate(SaeLatent(sae, latent=2), "resid_pre.1", threshold=1.0, steer=[add]),
        Gate(SaeLatent(other, latent=1), "resid_pre.1", threshold=1.0, steer=[add]),
    ]
    assert len({fingerprint([g]) for g in gates}) == len(gates)


def _gate(**fields):
    """A valid gate entry with ``fields`` replaced (a None value removes the field)."""
    entry = {"kind": "gate", "condition": {"kind": "projection", "direction": "t0"}, "point": "resid_pre.0", "threshold": 0.1,
             "steer": [{"kind": "add", "vector": "t0", "point": "resid_pre.1"}]}
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


BAD_SPECS = [
    # (description, entry, error type, text the message must contain)
    ("unknown kind", {"kind": "clampz"}, ConfigError, "unknown intervention kind 'clampz'"),
    ("no kind", {"vector": "t0"}, ConfigError, "no 'kind'"),
    ("entry not a mapping", "ablate", ConfigError, "must be a mapping"),
    ("unknown field", {"kind": "add", "vector": "t0", "point": "resid_pre.0", "strength": 2}, ConfigError, "unknown field(s) ['strength']"),
    ("missing field", {"kind": "add", "vector": "t0"}, ConfigError, "missing field 'point'"),
    ("tensor not in file", {"kind": "add", "vector": "t9", "point": "resid_pre.0"}, ConfigError, "names tensor 't9'"),
    ("coef infinite", {"kind": "add", "vector": "t0", "point": "resid_pre.0", "coef": float("inf")}, ConfigError, "add.coef must be a finite number"),
    ("coef nan", {"kind": "add", "vector": "t0", "point": "resid_pre.0", "coef": float("nan")}, ConfigError, "add.coef must be a finite number"),
    ("coef a word", {"kind": "add", "vector": "t0", "point": "resid_pre.0", "coef": "strong"}, ConfigError, "add.coef must be a finite number"),
    ("coef a bool", {"kind": "add", "vector": "t0", "point": "resid_pre.0", "coef": True}, ConfigError, "add.coef must be a finite number"),
    ("bad point", {"kind": "add", "vector": "t0", "point": "resid_middle.0"}, HookPointError, "unknown site"),
    ("layer out of range", {"kind": "add", "vector": "t0", "point": "resid_pre.99"}, HookPointError, "out of range"),
    ("bad positions", {"kind": "ablate", "direction": "t0", "points": ["resid_pre.0"], "positions": "middle"}, ConfigError, "positions"),
    ("empty points", {"kind": "ablate", "direction": "t0", "points": []}, ConfigError, "ablate.points is empty"),
    ("ceilings mismatch", {"kind": "cap", "direction": "t0", "points": ["resid_pre.0", "resid_pre.1"], "ceilings": [0.1]}, ShapeMismatchError, "2 points but 1 ceilings"),
    ("ceiling nan", {"kind": "cap", "direction": "t0", "points": ["resid_pre.0"], "ceilings": [float("nan")]}, ConfigError, "cap.ceilings must be a finite number"),
    ("gate: unknown condition", _gate(condition={"kind": "cosin", "direction": "t0"}), ConfigError, "condition: unknown condition 'cosin'"),
    ("gate: condition not a mapping", _gate(condition="cosine"), ConfigError, "field 'condition' must be a condition mapping"),
    ("gate: condition without kind", _gate(condition={"direction": "t0"}), ConfigError, "condition: no 'kind'"),
    ("gate: condition field missing", _gate(condition={"kind": "probe"}), ConfigError, "condition (probe): missing field 'weight'"),
    ("gate: condition bias inf", _gate(condition={"kind": "probe", "weight": "t0", "bias": float("inf")}), ConfigError, "probe.bias must be a finite number"),
    ("gate: sae_latent sae missing", _gate(condition={"kind": "sae_latent", "sae": "/nonexistent/sae", "latent": 1}), RefusalSteerError, "sae_latent.sae"),
    ("gate: missing threshold", _gate(threshold=None), ConfigError, "(gate): missing field 'threshold'"),
    ("gate: threshold inf", _gate(threshold=float("inf")), ConfigError, "gate.threshold must be a finite number"),
    ("gate: threshold nan", _gate(threshold=float("nan")), ConfigError, "gate.threshold must be a finite number"),
    ("gate: cosine threshold out of range", _gate(condition={"kind": "cosine", "direction": "t0"}, threshold=3.0), ConfigError, "[-1, 1]"),
    ("gate: empty steer", _gate(steer=[]), ConfigError, "field 'steer' must be a non-empty list"),
    ("gate: nested unknown kind", _gate(steer=[{"kind": "addd", "vector": "t0"}]), ConfigError, "steer[0]: unknown intervention kind 'addd'"),
    ("gate: bad nested entry", _gate(steer=[{"kind": "add", "vector": "t0"}]), ConfigError, "steer[0] (add): missing field 'point'"),
    ("gate: unknown reduce", _gate(reduce="median"), ConfigError, "gate.reduce must be one of last, max, mean"),
    ("gate: invert not a bool", _gate(invert="yes"), ConfigError, "gate.invert must be true or false"),
    ("gate: negative skip", _gate(skip_tokens=-1), ConfigError, "gate.skip_tokens must be >= 0"),
    ("gate: condition wrong width", _gate(condition={"kind": "projection", "direction": "t1"}), ShapeMismatchError, "projection.direction has width"),
    ("gate (old layout): above not a bool", {"kind": "gate", "direction": "t0", "point": "resid_pre.0", "threshold": 0.1, "above": "yes",
                                             "interventions": [{"kind": "add", "vector": "t0", "point": "resid_pre.1"}]}, ConfigError, "gate.above must be true or false"),
    ("sae missing", {"kind": "sae_splice", "sae": "/nonexistent/sae", "point": "resid_pre.0"}, RefusalSteerError, "sae_splice.sae"),
    ("skip_tokens a float", {"kind": "sae_splice", "sae": "/nonexistent", "point": "resid_pre.0", "skip_tokens": 1.5}, RefusalSteerError, "sae"),
    ("wrong width", {"kind": "add", "vector": "t1", "point": "resid_pre.0"}, ShapeMismatchError, "width"),
]


@pytest.mark.parametrize("what,entry,error,text", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_specs_get_one_readable_error(make_tiny_lm, tmp_path, what, entry, error, text):
    import json

    from safetensors.torch import save_file

    lm = make_tiny_lm("qwen2")
    save_file({"t0": torch.randn(lm.d_model), "t1": torch.randn(lm.d_model + 3)}, str(tmp_path / "steer.safetensors"))
    path = tmp_path / "steer.json"
    path.write_text(json.dumps({"version": 2, "tensors": "steer.safetensors", "interventions": [entry]}))
    with pytest.raises(error) as caught:
        load_steer_file(path, lm)
    message = str(caught.value)
    assert text in message, message
    assert str(path) in message   # names the file it came from
    assert "\n" not in caught.value.message


def test_bad_steer_files_and_constructors(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    (tmp_path / "broken.yaml").write_text("interventions: [kind: add\n")
    with pytest.raises(RefusalSteerError, match="cannot parse steer file"):
        load_steer_file(tmp_path / "broken.yaml", lm)
    (tmp_path / "top.yaml").write_text("version: 2\ninterventions: []\nsteers: []\n")
    with pytest.raises(ConfigError, match="unknown top-level field"):
        load_steer_file(tmp_path / "top.yaml", lm)
    (tmp_path / "v9.yaml").write_text("version: 9\ninterventions: []\n")
    with pytest.raises(ConfigError, match="version 9"):
        load_steer_file(tmp_path / "v9.yaml", lm)
    with pytest.raises(ConfigError, match="add.coef must be a finite number"):
        Add(torch.randn(4), "resid_pre.0", coef=float("inf"))
    with pytest.raises(ConfigError, match="set_projection.value must be a finite number"):
        SetProjection(torch.randn(4), "resid_pre.0", value=float("nan"))


def test_old_clamp_files_and_short_form_load_as_cap_with_a_warning(make_tiny_lm, tmp_path):
    import yaml
    from safetensors.torch import save_file

    lm = make_tiny_lm("qwen2")
    save_file({"t0": torch.randn(lm.d_model)}, str(tmp_path / "old.safetensors"))
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"version": 1, "tensors": "old.safetensors", "interventions": [
        {"kind": "clamp", "direction": "t0", "points": ["resid_pre.0"], "ceilings": [0.5], "positions": "all"}]}))
    with pytest.warns(DeprecationWarning, match="'clamp' is deprecated"):
        (cap,) = load_steer_file(tmp_path / "old.yaml", lm)
    assert isinstance(cap, ProjectionCap) and cap.ceilings == (0.5,)
    assert "clamp" in short_forms() and short_forms()["clamp"].deprecated


def test_old_gate_entries_load_as_a_cosine_gate_with_a_warning(make_tiny_lm, tmp_path):
    import yaml
    from safetensors.torch import save_file

    lm = make_tiny_lm("qwen2")
    save_file({"t0": _v(lm, 1), "t1": _v(lm, 2)}, str(tmp_path / "old.safetensors"))
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"version": 2, "tensors": "old.safetensors", "interventions": [
        {"kind": "gate", "direction": "t0", "point": "resid_pre.1", "threshold": 0.1, "above": False,
         "interventions": [{"kind": "add", "vector": "t1", "point": "resid_pre.2"}]}]}))
    with pytest.warns(DeprecationWarning, match="older field layout"):
        (gate,) = load_steer_file(tmp_path / "old.yaml", lm)
    assert isinstance(gate.condition, Cosine) and gate.invert and gate.reduce == "last" and isinstance(gate.steer[0], Add)
    assert fingerprint([gate]) == fingerprint([Gate(Cosine(_v(lm, 1)), "resid_pre.1", threshold=0.1, invert=True, steer=[Add(_v(lm, 2), "resid_pre.2")])])


def test_short_form_options_and_errors(make_tiny_lm, tmp_path):
    from refusal_steer.directions.io import save_direction

    lm = make_tiny_lm("qwen2")
    save_direction(tmp_path / "dir", _v(lm, 7), "resid_pre.1", actadd_coef=2.5, actadd_positions="prompt")
    d = tmp_path / "dir"
    (add,) = parse_steer(f"actadd:{d}:coef=-1.5:positions=all", lm)
    assert add.coef == -1.5 and add.positions == "all"
    (add,) = parse_steer(f"actadd:{d}:3", lm)  # the positional form keeps working
    assert add.coef == 3.0 and add.positions == "prompt"
    (ablate,) = parse_steer(f"ablate:{d}:positions=prompt", lm)
    assert ablate.positions == "prompt"
    assert parse_steer("none", lm) == []
    with pytest.raises(ConfigError, match=r"actadd\.coef must be a finite number, got 'abc'"):
        parse_steer(f"actadd:{d}:abc", lm)  # no longer "no saved direction at DIR:abc"
    with pytest.raises(ConfigError, match="unknown option 'strength'"):
        parse_steer(f"actadd:{d}:strength=2", lm)
    with pytest.raises(ConfigError, match="given twice"):
        parse_steer(f"actadd:{d}:coef=1:coef=2", lm)
    with pytest.raises(ConfigError, match="not key=value"):
        parse_steer(f"ablate:{d}:prompt", lm)
    with pytest.raises(ConfigError, match="no short form 'ablat'"):
        parse_steer(f"ablat:{d}", lm)
    with pytest.raises(ConfigError, match="names no folder"):
        parse_steer("ablate:", lm)


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_kind(Add, [FieldSpec("vector", "tensor")])
    with pytest.raises(ValueError, match="already registered"):
        register_short_form(ShortForm("ablate", lambda *a: [], {}))


def test_help_lists_the_registered_forms():
    for command in (["--help"], ["eval", "--help"]):
        result = subprocess.run(["refusal-steer", *command], capture_output=True, text=True, env={"COLUMNS": "400", "PATH": _path()})
        text = " ".join(result.stdout.split())
        for prefix, form in short_forms().items():
            if not form.deprecated:
                assert f"{prefix}:DIR" in text, (command, prefix)


def _path() -> str:
    import os

    return os.environ.get("PATH", "")


def test_warnings_module_untouched():
    warnings.simplefilter("default")  # the deprecation tests above used pytest.warns, not a global filter
