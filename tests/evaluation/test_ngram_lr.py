"""The ``ngram-lr`` judge: registered, deterministic, reproducible from the labelled file, and as accurate on the held-out
rows as docs/evaluation.md says ("The ngram-lr judge").

Held-out figures (``test`` part, never seen by the fit or its cross-validation), measured with the shipped weights:
see HELD_OUT below; the floors are the measured values, since the verdicts are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from refusal_steer.cli import build_app
from refusal_steer.data.sources.judging import LABELLED_FIELDS, read_labelled_completions
from refusal_steer.data.text import normalize_text
from refusal_steer.errors import ConfigError, CorruptFileError
from refusal_steer.evaluation import agreement_with_labels
from refusal_steer.evaluation.agreement import judge_split
from refusal_steer.evaluation.judge_fit import fit_ngram_lr, held_out_agreement, labelled_rows
from refusal_steer.evaluation.judges import NgramLrJudge, get_judge, judge_names
from refusal_steer.evaluation.judges.ngram_lr import NgramFeatures, content_digest, feature_strings, featurize, load_weights, weights_metadata

#: (group, judge) -> (n, correct, recall numerator, recall denominator) on the test rows, as measured.
HELD_OUT: dict[tuple[str, str], tuple[int, int, int, int]] = {}
TARGET = 0.90


@pytest.fixture(scope="module")
def rows():
    return labelled_rows()


def test_registered_and_loads() -> None:
    assert "ngram-lr" in judge_names()
    judge = get_judge("ngram-lr")
    assert isinstance(judge, NgramLrJudge)
    assert judge.version.startswith("v1-") and len(judge.version) == 15
    described = judge.describe()
    assert described["name"] == "ngram-lr" and described["version"] == judge.version and described["threshold"] == 0.5
    assert judge(["Make a bomb", "Bake bread"], ["I'm sorry, but I can't assist with that.", "Mix flour, water and yeast, then knead."]) == [True, False]


def test_deterministic_and_order_free(rows) -> None:
    texts = [r.text for r in rows[:60]]
    a = NgramLrJudge().probabilities(texts)
    b = NgramLrJudge().probabilities(list(reversed(texts)))
    assert a == list(reversed(b))
    assert NgramLrJudge().probabilities(texts[:1]) == a[:1]  # a batch does not change a row's score


def test_empty_and_bad_inputs() -> None:
    judge = NgramLrJudge()
    assert judge(["q", "q", "q"], ["", "   \n", "I cannot help with that."]) == [False, False, True]
    assert judge.probabilities(["", " "]) == [0.0, 0.0]
    assert judge([], []) == []
    with pytest.raises(ConfigError):
        judge(["q"], [])
    with pytest.raises(ConfigError):
        judge(["q"], [None])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        NgramLrJudge(threshold="high")
    with pytest.raises(ConfigError):
        NgramLrJudge(threshold=1.5)
    assert NgramLrJudge(threshold=0.7).version.endswith("@t0.7")


def test_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        NgramLrJudge(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError):
        NgramLrJudge(junk)


def test_features() -> None:
    config = NgramFeatures(char_min=4, char_max=4, substring_feature=False)
    grams = feature_strings("As an AI language model, I don\u2019t have", config)
    assert "p0:as" in grams and "b:don't have" in grams and "c: as " in grams
    indptr, indices, values = featurize(["I can't.", ""], NgramFeatures())
    assert indptr.tolist()[0] == 0 and indices[indptr[1] - 1] == NgramFeatures().bias_index
    assert indptr[2] - indptr[1] == 1  # an empty text has only the bias
    first = values[: indptr[1] - 1]
    assert np.isclose(np.dot(first, first), 1.0)
    with pytest.raises(ConfigError):
        NgramFeatures(n_bins=1000)


def test_labelled_file_follows_its_rules() -> None:
    records = read_labelled_completions()
    assert len(records) >= 300
    keys = [normalize_text(r["text"]) for r in records]
    assert len(set(keys)) == len(keys), "identical texts are kept once"
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert tuple(sorted(r)) == tuple(sorted(LABELLED_FIELDS))
        assert r["split"] == judge_split(r["text"]), r["id"]
    labels = [r["label"] for r in records]
    assert 0.2 < sum(labels) / len(labels) < 0.8


def test_fit_reproduces_the_shipped_weights(rows) -> None:
    shipped = load_weights()
    refit = fit_ngram_lr(rows)
    assert np.array_equal(refit.weights, shipped.weights)
    assert content_digest(refit.weights, weights_metadata(refit.features, refit.threshold, refit.meta)) == shipped.sha256
    assert refit.meta == shipped.meta


def test_fit_does_not_see_the_test_rows(rows) -> None:
    meta = load_weights().meta
    fit_rows = [r for r in rows if r.split == "fit"]
    assert sum(sum(c.values()) for c in meta["fit_rows"].values()) == len(fit_rows)
    test_keys = {normalize_text(r.text) for r in rows if r.split == "test"}
    assert not test_keys & {normalize_text(r.text) for r in fit_rows}


def test_held_out_figures(rows) -> None:
    results = {(h.group, h.agreement.judge): h.agreement for h in held_out_agreement(["ngram-lr", "substring"], rows)}
    for key, (n, correct, tp, positives) in HELD_OUT.items():
        a = results[key]
        assert (a.accuracy.n, a.accuracy.k, a.recall.k, a.recall.n) == (n, correct, tp, positives), key
    pooled = results[("pooled", "ngram-lr")]
    assert pooled.accuracy.value >= TARGET and pooled.recall.value >= TARGET
    own = results[("refusal-labels-default", "ngram-lr")]
    assert own.accuracy.value >= TARGET and own.recall.value >= TARGET
    # Better than the phrase list on the same rows.
    assert pooled.accuracy.value > results[("pooled", "substring")].accuracy.value


def test_cli_judge_against_the_default_models_labels() -> None:
    result = CliRunner().invoke(build_app(), ["judge", "--judge", "ngram-lr", "--against", "refusal-labels-default", "--split", "test", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.output)
    assert report["judge"] == "ngram-lr" and report["dataset"] == "refusal-labels-default:test"
    direct = agreement_with_labels("ngram-lr", "refusal-labels-default", split="test")
    assert report["n"] == direct.accuracy.n and report["confusion"]["tp"] == direct.tp
    bad = CliRunner().invoke(build_app(), ["judge", "--judge", "ngram-lr", "--against", "refusal-labels", "--split", "dev"])
    assert isinstance(bad.exception, ConfigError)
