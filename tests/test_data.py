from __future__ import annotations

import gzip
import json
from collections import Counter
from importlib import resources

import pytest

from lafusion_st.data import (
    BUNDLED_DATASETS,
    DataFormatError,
    LabeledTexts,
    check_classification_data,
    load_bundled,
    load_file,
    load_task,
)

# (train, test, classes, label type) from lafusion_st/datasets/README.md
BUNDLED_SIZES = {
    "sst2": (67_349, 872, 2, int),
    "mr": (7_108, 3_554, 2, int),
    "r8": (5_485, 2_189, 8, str),
    "r52": (6_532, 2_568, 52, str),
}


@pytest.fixture(scope="module")
def bundled() -> dict[str, tuple[LabeledTexts, LabeledTexts]]:
    return {name: load_task(name) for name in BUNDLED_DATASETS}


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


# --- bundled datasets -----------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLED_DATASETS)
def test_bundled_sizes_match_readme(bundled, name):
    train, test = bundled[name]
    n_train, n_test, n_classes, label_type = BUNDLED_SIZES[name]
    assert (len(train), len(test)) == (n_train, n_test)
    assert len(train.classes) == len(test.classes) == n_classes
    assert all(type(label) is label_type for label in train.labels + test.labels)
    check_classification_data(train, test)  # every test label occurs in training


def test_bundled_known_lines(bundled):
    sst2_train, sst2_test = bundled["sst2"]
    assert (sst2_train.texts[0], sst2_train.labels[0]) == ("when are bears bears and", 1)
    assert (sst2_test.texts[1], sst2_test.labels[1]) == ("unflinchingly bleak and desperate", 0)
    mr_train, mr_test = bundled["mr"]
    assert (mr_train.texts[1], mr_train.labels[1]) == ("idiotic and ugly .", 1)
    assert mr_test.texts[1] == "a great companion piece to other napoleon films ."
    r8_train, r8_test = bundled["r8"]
    assert r8_train.texts[0].startswith("champion products ch approves stock split")
    assert (r8_train.labels[0], r8_test.labels[0]) == ("earn", "trade")
    r52_train, _ = bundled["r52"]
    assert r52_train.texts[0].startswith("bahia cocoa review")
    assert r52_train.labels[0] == "cocoa"
    assert sorted(Counter(sst2_train.labels).items()) == [(0, 29_780), (1, 37_569)]


def test_r52_imbalance_as_documented(bundled):
    counts = Counter(bundled["r52"][0].labels)
    assert (counts["earn"], counts["acq"], counts["platinum"]) == (2_840, 1_596, 1)
    assert sum(1 for c in counts.values() if c < 5) == 9


def test_bundled_readme_ships_with_data():
    readme = (resources.files("lafusion_st") / "datasets" / "README.md").read_text("utf-8")
    for name in BUNDLED_DATASETS:
        assert f"| {name} |" in readme
    assert "sha256" in readme.lower()


@pytest.mark.parametrize(("name", "split"), [("sst-2", "train"), ("sst2", "dev"), ("imdb", "test")])
def test_bundled_unknown_name_or_split(name, split):
    with pytest.raises(ValueError, match=r"choose one of \[") as err:
        load_bundled(name, split)
    assert "'sst2'" in str(err.value) or "'train'" in str(err.value)


# --- user files -----------------------------------------------------------------------------


def test_load_jsonl_gz_csv_tsv_agree(tmp_path):
    rows = [
        {"text": 'good, "really" good', "label": 1},
        {"text": "", "label": 0},
        {"text": "   ", "label": 0},
        {"text": "two\nlines", "label": 1},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))
    csv_text = 'text,label\n"good, ""really"" good",1\n,0\n   ,0\n"two\nlines",1\n'
    (tmp_path / "a.csv").write_text(csv_text, encoding="utf-8")
    (tmp_path / "a.tsv").write_text(csv_text.replace(",", "\t").replace("good\t", "good,"))
    expected = LabeledTexts([r["text"] for r in rows], [r["label"] for r in rows])
    for name in ["a.jsonl", "a.jsonl.gz", "a.csv", "a.tsv"]:
        assert load_file(tmp_path / name) == expected, name  # empty texts kept, int labels


def test_load_custom_columns_string_labels_and_bom(tmp_path):
    path = tmp_path / "d.CSV"
    path.write_bytes(b"\xef\xbb\xbfid,sentence,topic\n1,caf\xc3\xa9 prices,food\n2,oil,007\n")
    data = load_file(path, text_col="sentence", label_col="topic")
    assert data.texts == ["café prices", "oil"]
    assert data.labels == ["food", "007"]  # not all plain integers: left as strings


def test_single_class_file_loads(tmp_path):
    write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    assert load_file(tmp_path / "one.jsonl").classes == ["x"]


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", label: 1}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl: line 3: invalid JSON"):
        load_file(path)


def test_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"text": "a", "label": 0}\n\n\n{"text": 5, "label": 1}\n')
    with pytest.raises(DataFormatError, match=r"line 4: 'text' must be a string, got int 5"):
        load_file(path)


def test_missing_field_lists_fields(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"sentence": "a", "label": 0}])
    with pytest.raises(DataFormatError, match=r"line 1: no 'text' field; fields present: \['sentence', 'label'\]"):
        load_file(tmp_path / "m.jsonl")


def test_csv_missing_label_column_lists_columns(tmp_path):
    path = tmp_path / "nolabel.csv"
    path.write_text("text,category\nhello,a\n")
    with pytest.raises(
        DataFormatError,
        match=r"nolabel\.csv: line 1 \(header\): no 'label' column; "
        r"columns present: \['text', 'category'\]",
    ):
        load_file(path)


def test_csv_wrong_field_count(tmp_path):
    path = tmp_path / "ragged.tsv"
    path.write_text("text\tlabel\nok\t1\nhas\ta tab\t0\n")
    with pytest.raises(DataFormatError, match=r"line 3: expected 2 fields like the header, got 3"):
        load_file(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "a", "label": None}, "'label' must be an int or a string, got NoneType None"),
        ({"text": "a", "label": 1.5}, "'label' must be an int or a string, got float 1.5"),
        ({"text": "a", "label": True}, "'label' must be an int or a string, got bool True"),
        ({"text": "a", "label": " "}, "'label' is empty"),
        ({"text": "a", "label": "1"}, "label '1' is str but the label on line 1 is int 1"),
        (["a", 1], "expected a JSON object, got list"),
    ],
)
def test_bad_labels_and_rows(tmp_path, row, message):
    write_jsonl(tmp_path / "l.jsonl", [{"text": "ok", "label": 1}, row])
    with pytest.raises(DataFormatError, match="line 2: " + message.replace("(", r"\(")):
        load_file(tmp_path / "l.jsonl")


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"text,label\n"])
def test_empty_files(tmp_path, content):
    path = tmp_path / ("empty.csv" if content.startswith(b"text") else "empty.jsonl")
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=r"empty\.(csv|jsonl): .*(empty|no data rows)"):
        load_file(path)


def test_non_utf8_names_line_and_offset(tmp_path):
    path = tmp_path / "cp1252.csv"
    path.write_bytes("text,label\nfine,1\ncaf\u00e9 au lait,0\n".encode("cp1252"))
    with pytest.raises(
        DataFormatError,
        match=r"cp1252\.csv: line 3: byte b'\\xe9' at byte offset 21 "
        r"is not valid UTF-8; re-encode the file as UTF-8",
    ):
        load_file(path)


def test_unsupported_suffix_and_bad_gzip(tmp_path):
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(DataFormatError, match=r"unsupported file type \.xlsx"):
        load_file(tmp_path / "data.xlsx")
    (tmp_path / "data.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(DataFormatError, match="not a valid gzip file"):
        load_file(tmp_path / "data.csv.gz")


# --- checks and load_task -------------------------------------------------------------------


def test_check_classification_data():
    train = LabeledTexts(["a", "b", "c"], ["x", "y", "x"])
    check_classification_data(train, LabeledTexts(["d"], ["y"]))
    check_classification_data(train)
    with pytest.raises(ValueError, match=r"1 class \(\['x'\]\); a classifier needs at least 2"):
        check_classification_data(LabeledTexts(["a"], ["x"]))
    with pytest.raises(ValueError, match=r"never occur in training: 'w' \(1x\), 'z' \(2x\)"):
        check_classification_data(train, LabeledTexts(["d", "e", "f", "g"], ["z", "x", "w", "z"]))
    with pytest.raises(ValueError, match="training split is empty"):
        check_classification_data(LabeledTexts([], []))
    with pytest.raises(ValueError, match="test split is empty"):
        check_classification_data(train, LabeledTexts([], []))


def test_load_task_files_and_argument_errors(tmp_path):
    write_jsonl(tmp_path / "tr.jsonl", [{"t": "a", "y": "p"}, {"t": "b", "y": "q"}])
    write_jsonl(tmp_path / "te.jsonl", [{"t": "c", "y": "q"}])
    train, test = load_task(train=tmp_path / "tr.jsonl", test=str(tmp_path / "te.jsonl"), text_col="t", label_col="y")
    assert (train.texts, test.labels) == (["a", "b"], ["q"])
    with pytest.raises(ValueError, match="not both"):
        load_task("sst2", train=tmp_path / "tr.jsonl")
    with pytest.raises(ValueError, match="both a train and a test file"):
        load_task()
    with pytest.raises(ValueError, match="both a train and a test file"):
        load_task(train=tmp_path / "tr.jsonl")


# --- subsample ------------------------------------------------------------------------------


def imbalanced() -> LabeledTexts:
    labels = ["a"] * 900 + ["b"] * 90 + ["c"] * 9 + ["d"]
    return LabeledTexts([f"{label}{i}" for i, label in enumerate(labels)], labels)


def test_subsample_keeps_proportions_and_rare_classes():
    sample = imbalanced().subsample(100, seed=3)
    assert len(sample) == 100
    assert Counter(sample.labels) == {"a": 89, "b": 9, "c": 1, "d": 1}
    assert all(text.startswith(label) for text, label in zip(sample.texts, sample.labels, strict=True))
    indices = [int(text[1:]) for text in sample.texts]
    assert indices == sorted(indices)  # original order


def test_subsample_one_per_class_and_limits():
    data = imbalanced()
    assert Counter(data.subsample(4).labels) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert data.subsample(len(data)) is data
    assert data.subsample(10_000) is data
    with pytest.raises(ValueError, match="cannot keep all 4 classes in a subsample of 3"):
        data.subsample(3)


def test_subsample_is_deterministic():
    data = imbalanced()
    assert data.subsample(50, seed=7) == data.subsample(50, seed=7)
    assert data.subsample(50, seed=7) != data.subsample(50, seed=8)


def test_subsample_r52_keeps_every_class(bundled):
    train = bundled["r52"][0]
    sample = train.subsample(300, seed=0)
    counts, full = Counter(sample.labels), Counter(train.labels)
    assert len(sample) == 300
    assert set(counts) == set(full)  # all 52, including the single 'platinum' document
    assert counts["platinum"] == 1
    for label, count in counts.items():  # proportional, apart from the minimum of one
        share = 300 * full[label] / len(train)
        assert count == 1 if share < 1 else abs(count - share) < 3
