"""The shared position selector: names, explicit prompt-token indices, padding never selected."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError
from refusal_steer.interventions.positions import parse_positions, position_mask

from ._helpers import call_with

# Row 0: two padding tokens, three prompt tokens, one generated. Row 1: five prompt tokens, one generated.
PROMPT = [[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]
PADDING = [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]


def _mask(spec):
    mask = position_mask(parse_positions(spec), call_with(PROMPT, PADDING).positions, torch.float32)
    return None if mask is None else mask.squeeze(-1).to(torch.int64).tolist()


def test_named_selectors():
    assert _mask("all") == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert _mask("prompt") == PROMPT
    assert _mask("generated") == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]]


def test_all_without_padding_is_unmasked():
    call = call_with([[1, 1, 0]], [[0, 0, 0]])
    assert position_mask("all", call.positions, torch.float32) is None


def test_indices_count_prompt_tokens_not_padding():
    assert _mask([0]) == [[0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert _mask("-1") == [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0]]
    assert _mask([-2, 1]) == [[0, 0, 0, 1, 0, 0], [0, 1, 0, 1, 0, 0]]


@pytest.mark.parametrize("bad", ["everything", "1,x", [], [1.5j]])
def test_bad_selectors_raise(bad):
    with pytest.raises(ConfigError):
        parse_positions(bad)
