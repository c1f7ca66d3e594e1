import json
import shutil

import pytest

from tiergate.data.datasets import load_dataset, parse_dumpavail, split_of_hash
from tiergate.errors import DataError


def test_canonical_split_rule():
    assert [split_of_hash(h) for h in "0b" "cd" "ef"] == ["train", "train", "calibration", "calibration", "test", "test"]


def test_spamassassin_canonical_split(spam_ds):
    info = spam_ds.info()
    assert info["n"] == 6046
    assert info["splits"]["test"] == {"n": 769, "labels": {"ham": 520, "spam": 249}}
    assert info["splits"]["calibration"]["n"] == 780
    # raw bytes, headers included
    assert all(e.text.startswith(("From ", "Return-Path", "Received", "Delivered", "X-", "Message")) or ":" in e.text[:200]
               for e in spam_ds.split("test")[:50])


def test_dumpavail_parsing():
    sample = ("Package: foo\nVersion: 1\nDescription: first line\n second line\n .\n third\nSection: contrib/python\n\n"
              "Package: bar\nSection: libs\nDescription: only\nHomepage: x\n\nPackage: nodesc\nSection: libs\n")
    rows = list(parse_dumpavail(sample))
    assert rows == [("foo", "first line\nsecond line\n.\nthird", "python"), ("bar", "only", "libs")]


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt-cache (Debian)")
def test_debian_packages(tmp_path):
    ds = load_dataset("debian-packages")
    info = ds.info()
    assert info["n_labels"] >= 40 and info["n"] > 10_000
    e = ds.examples[0]
    assert "\n" in e.text and "/" not in e.label


def test_jsonl_and_csv(tmp_path):
    rows = [{"text": f"item {i} {'good' if i % 2 else 'bad'}", "label": "g" if i % 2 else "b"} for i in range(50)]
    rows[0]["split"] = "test"
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_dataset(str(p))
    assert ds.labels == ["b", "g"] and len(ds.examples) == 50
    assert ds.examples[0].split == "test"
    assert {e.split for e in ds.examples} <= {"train", "calibration", "test"}
    c = tmp_path / "d.csv"
    c.write_text("text,label\n\"hello, world\",a\nbye,b\n")
    assert [e.text for e in load_dataset(str(c)).examples] == ["hello, world", "bye"]


@pytest.mark.parametrize("content,msg", [
    ('{"text": "a"}\n', "needs 'text' and 'label'"),
    ('not json\n', "not valid JSON"),
    ('{"text": "a", "label": "x", "split": "dev"}\n', "split 'dev'"),
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "only one label"),
])
def test_bad_files_get_clear_errors(tmp_path, content, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=msg):
        load_dataset(str(p))


def test_unknown_name():
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("no-such-dataset")
