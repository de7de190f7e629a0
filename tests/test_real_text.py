"""Real text for perplexity: package source per directory (checked against the directory listing itself), the Bible
split into books, the skip of a missing Bible reported with its reason, and the jsonl read back by perplexity."""

import importlib.metadata
import json
import shutil

import pytest

from endprompt_ray.corpora.real_text import (BIBLE, bible_books, package_dir, package_documents, real_text, spread,
                                             write_real_text)
from endprompt_ray.errors import ConfigError
from endprompt_ray.eval.perplexity import read_documents


def test_spread_takes_evenly_spaced_items():
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread(list(range(10)), 1) == [0]
    assert spread(list("abc"), 5) == ["a", "b", "c"]


def test_a_package_document_is_one_directory_in_file_order():
    docs = package_documents("transformers", max_documents=3, min_chars=20_000, max_chars=60_000)
    assert len(docs) == 3 and docs == package_documents("transformers", 3, 20_000, 60_000)  # deterministic
    root = package_dir("transformers")
    for doc in docs:
        assert doc.source == "transformers" and doc.version == importlib.metadata.version("transformers")
        assert 20_000 <= len(doc.text) <= 60_000 and doc.text.startswith("# file: ")
        directory = root / doc.name
        listed = sorted(p.name for p in directory.iterdir() if p.suffix == ".py")
        headers = [line[len("# file: "):] for line in doc.text.splitlines() if line.startswith("# file: ")]
        prefix = "" if doc.name == "." else doc.name + "/"
        assert headers == [prefix + name for name in listed[:len(headers)]]
        first = (directory / listed[0]).read_text("utf-8")
        assert doc.text[len(f"# file: {headers[0]}\n"):].startswith(first[:1000])
    assert docs[0].name == "."  # the package's top level sorts first


def test_a_bible_listing_splits_into_books():
    listing = ("\nGenesis 1\n\n  1 In the beginning.\n\nGenesis 2\n\n  1 Thus the heavens.\n"
               "\n1 Samuel 1\n\n  1 Now there was a certain man.\n")
    assert bible_books(listing) == [
        ("Genesis", "Genesis 1\n\n  1 In the beginning.\n\nGenesis 2\n\n  1 Thus the heavens.\n"),
        ("1 Samuel", "1 Samuel 1\n\n  1 Now there was a certain man.\n")]


def test_the_bible_is_read_or_its_skip_says_why(tmp_path):
    report = real_text([BIBLE], max_documents=2)
    if shutil.which("bible") is None:
        assert report.documents == [] and "apt-get install bible-kjv" in report.skipped[BIBLE]
        assert f"skipped 1 source(s): {BIBLE}" in report.describe()
        pytest.skip(f"Debian's bible-kjv is not installed: {report.skipped[BIBLE]}")
    assert [d.source for d in report.documents] == [BIBLE, BIBLE] and report.documents[0].name == "Genesis"
    assert report.documents[0].text.startswith("Genesis 1\n") and "In the beginning God created" in \
        report.documents[0].text


def test_the_jsonl_is_what_perplexity_reads(tmp_path):
    path = tmp_path / "real.jsonl"
    report = write_real_text(path, ["ray", "torch"], max_documents=2, min_chars=30_000, max_chars=40_000)
    assert report.counts() == {"ray": 2, "torch": 2} and report.skipped == {}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["source"] for r in rows] == ["ray", "ray", "torch", "torch"]
    assert rows[2]["version"] == importlib.metadata.version("torch")
    assert read_documents(path) == [d.text for d in report.documents]


def test_bad_sources_say_what_to_fix():
    with pytest.raises(ConfigError, match="no_such_package_here are not installed packages; choose from"):
        real_text(["ray", "no_such_package_here"])
    with pytest.raises(ConfigError, match="0 < min_chars <= max_chars"):
        package_documents("ray", min_chars=10, max_chars=5)
    report = real_text(["wonderwords"], max_documents=1, min_chars=10 ** 6, max_chars=10 ** 6)  # a small package
    assert report.documents == [] and "no directory of 1000000+ characters" in report.skipped["wonderwords"]
