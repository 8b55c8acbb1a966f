"""The paired comparisons `lafusion run` reports: each distinct test once in Holm's family."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lafusion_st.pipeline import BEST_LAYER, FUSED_LAYERS, LAST_LAYER, Row, compare_rows
from lafusion_st.spec import EmbedderSpec
from lafusion_st.stats import holm, mcnemar


def _row(role: str, layers: list[int], correct: list[bool]) -> Row:
    test = SimpleNamespace(correct=np.array(correct))
    return Row(role, EmbedderSpec("minilm-l6", layers), cv=None, test=test)  # type: ignore[arg-type]


def test_last_layer_that_is_also_the_best_is_tested_once() -> None:
    fused = [True] * 30 + [False] * 10
    last = [True] * 20 + [False] * 20
    other_fused = [True] * 25 + [False] * 15
    rows = {
        ("a", FUSED_LAYERS): _row(FUSED_LAYERS, [1, 6], fused),
        ("a", LAST_LAYER): _row(LAST_LAYER, [6], last),
        ("a", BEST_LAYER): _row(BEST_LAYER, [6], last),  # the same configuration as the last layer
        ("b", FUSED_LAYERS): _row(FUSED_LAYERS, [2, 6], other_fused),
        ("b", LAST_LAYER): _row(LAST_LAYER, [6], last),
        ("b", BEST_LAYER): _row(BEST_LAYER, [3], last),
    }
    comparisons = compare_rows(rows, ["a", "b"])
    assert [(c.better, c.worse) for c in comparisons] == [
        ("minilm-l6 fused layers [1, 6]", "minilm-l6 last layer [6]"),
        ("minilm-l6 fused layers [2, 6]", "minilm-l6 last layer [6]"),
        ("minilm-l6 fused layers [2, 6]", "minilm-l6 best layer [3]"),
    ]
    p_values = [mcnemar(np.array(fused), np.array(last)).p_value]
    p_values += [mcnemar(np.array(other_fused), np.array(last)).p_value] * 2
    assert [c.holm_p_value for c in comparisons] == pytest.approx(holm(p_values))
