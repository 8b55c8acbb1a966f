"""eval/classifier_heads.py: its rows carry lafusion_st.stats's interval and paired tests, as lafusion run's do."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classifier_heads import _compare, chosen, evaluate

from lafusion_st.heads import LogisticHead
from lafusion_st.stats import accuracy_interval, mcnemar


def test_rows_use_the_library_interval_and_mcnemar_test() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(600) % 2
    X = rng.normal(size=(600, 6)) + np.array([1.0, 0.8, 0.6, 0.2, 0.1, 0.0]) * y[:, None]  # overlapping classes
    train, test = slice(0, 200), slice(200, 600)
    rows = _compare(
        [
            evaluate(name, LogisticHead(C=1.0), X[train, columns], y[train], X[test, columns], y[test], (width,))
            for name, columns, width in (("all columns", slice(None), 6), ("weak columns", slice(3, None), 3))
        ]
    )
    reference, other = (np.asarray(row["correct"]) for row in rows)
    assert reference.mean() > other.mean() > 0.5  # two different heads, both better than chance
    for row, correct in zip(rows, (reference, other), strict=True):
        interval = accuracy_interval(correct)
        assert row["accuracy"] == correct.mean() and row["ci95"] == [interval.low, interval.high]
    assert rows[0]["mcnemar_p"] is None and rows[1]["mcnemar_p"] == mcnemar(other, reference).p_value


def test_features_follow_the_pooling_the_selection_chose(tmp_path) -> None:
    (tmp_path / "mr").mkdir()
    selections = {"smollm2-135m": {"chosen": [9, 15], "pooling": "last"}, "gemma3-270m": {"chosen": [6]}}
    (tmp_path / "mr" / "report.json").write_text(json.dumps({"selections": selections}))
    assert chosen("mr", "smollm2-135m", tmp_path) == ([9, 15], "last")
    assert chosen("mr", "gemma3-270m", tmp_path) == ([6], "mean")  # written before pooling was searched
    with pytest.raises(SystemExit, match=r"no selection for minilm-l6 \(it has \['gemma3-270m', 'smollm2-135m'\]\)"):
        chosen("mr", "minilm-l6", tmp_path)


def test_a_logistic_head_read_from_the_fit_cache_reports_the_fits_own_time(tmp_path, monkeypatch) -> None:
    """On full R52 the heads' logistic rows are the selection's test fits, read from the fit cache: the table
    must show what that fit cost, marked, not the milliseconds of the read."""
    from classifier_heads import CACHED, CACHED_NOTE, table

    from lafusion_st.fit_cache import SWITCH_ENV, default_fit_cache_dir
    from lafusion_st.probe import fit_and_test

    monkeypatch.setenv("LAFUSION_CACHE", str(tmp_path))
    monkeypatch.setenv(SWITCH_ENV, "on")
    rng = np.random.default_rng(1)
    y = np.arange(400) % 3
    X = (rng.normal(size=(400, 12)) + y[:, None] * 0.4).astype(np.float32)
    fit_and_test(X[:300], y[:300], X[300:], y[300:])  # the selection's test fit
    (sidecar,) = default_fit_cache_dir().glob("*.json")
    stored_seconds, stored_cpu = json.loads(sidecar.read_text())["fit_seconds"]
    (row,) = _compare([evaluate("logistic", LogisticHead(), X[:300], y[:300], X[300:], y[300:], (12,))])
    assert row["fit_read_from_cache"] and stored_seconds <= row["fit_seconds"] < stored_seconds + 0.5
    assert stored_cpu <= row["fit_cpu_seconds"]
    (fresh,) = _compare([evaluate("C=1", LogisticHead(C=1.0), X[:300], y[:300], X[300:], y[300:], (12,))])
    assert not fresh["fit_read_from_cache"]
    for each in (row, fresh):
        each.update(dataset="toy", mcnemar_p_holm=None)
    lines = table([row, fresh]).splitlines()
    assert lines[2].endswith(f"s{CACHED} |") and lines[3].endswith(" s |") and lines[-1] == CACHED_NOTE
    assert CACHED_NOTE not in table([fresh])
