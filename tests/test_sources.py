"""Remote corpora: fsspec URLs listed on the driver and streamed by Ray Data (file:// on local files laid out as
the Hub's SlimPajama datasets), compressed JSON lines, and the offline Hub's one-line message."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from endprompt_ray.config.loader import load_config
from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.data.dataset import build_dataset, data_report
from endprompt_ray.data.sources import format_of, resolve_remote
from endprompt_ray.errors import ConfigError


def _cfg(*paths, **extra):
    return load_config(None, ["method.physical_length=64", "method.target_length=1024", "data.batch_size=8",
                              f"data.paths={json.dumps(list(paths))}", *[f"{k}={v}" for k, v in extra.items()]])


@pytest.fixture(scope="module")
def slimpajama_like(tmp_path_factory):
    """DKYoon/SlimPajama-6B's layout (data/train-0000k-of-0000n.parquet with text and meta columns) and
    cerebras/SlimPajama-627B's (train/chunk1/example_train_k.jsonl.zst)."""
    root = tmp_path_factory.mktemp("hub")
    docs = generate_documents(30, seed=11)
    (root / "data").mkdir()
    for k, part in enumerate([docs[:12], docs[12:]]):
        table = pa.table({"text": part, "meta": [json.dumps({"redpajama_set_name": "RedPajamaC4"})] * len(part)})
        pq.write_table(table, root / "data" / f"train-{k:05d}-of-00002.parquet")
    chunk = root / "train" / "chunk1"
    chunk.mkdir(parents=True)
    for k, part in enumerate([docs[:10], docs[10:]]):
        lines = "".join(json.dumps({"text": d, "meta": {"redpajama_set_name": "RedPajamaBook"}}) + "\n" for d in part)
        with pa.CompressedOutputStream(str(chunk / f"example_train_{k}.jsonl.zst"), "zstd") as out:
            out.write(lines.encode())
    return root, docs


def test_file_urls_with_globs_stream_every_document(local_ray, slimpajama_like, tiny_tokenizer):
    root, docs = slimpajama_like
    for url, fmt in [(f"file://{root}/data/train-*.parquet", "parquet"), (f"file://{root}/train/chunk1", "jsonl")]:
        corpus = resolve_remote([url], "auto")
        assert corpus.format == fmt and len(corpus.files) == 2
        dataset, stats = build_dataset(_cfg(url), tiny_tokenizer)
        dataset.take_all()
        assert data_report(stats)["documents"] == len(docs)  # every shard read, zstd decompressed on the fly


def test_remote_listing_errors_are_one_line(slimpajama_like, tiny_tokenizer):
    root, _ = slimpajama_like
    with pytest.raises(ConfigError, match="match no files"):
        resolve_remote([f"file://{root}/data/*.jsonl"], "auto")
    with pytest.raises(ConfigError, match="need an explicit data.format"):
        resolve_remote(["s3://bucket/corpus/"], "auto")
    with pytest.raises(ConfigError, match="has no column 'body'"):
        build_dataset(_cfg(f"file://{root}/data/train-*.parquet", **{"data.text_field": "body"}), tiny_tokenizer)
    assert [format_of(n) for n in ["a.jsonl.zst", "b.json.gz", "c.parquet", "d.txt", "e.parquet.zst", "f"]] == [
        "jsonl", "jsonl", "parquet", "text", None, None]


def test_hub_path_offline_says_how_to_proceed():
    code = ("from endprompt_ray.data.sources import resolve_remote\n"
            "resolve_remote(['hf://datasets/DKYoon/SlimPajama-6B/data/train-*.parquet'], 'auto')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot list 'hf://datasets/DKYoon/SlimPajama-6B/data/train-*.parquet'" in last
    assert "download the files elsewhere and point data.paths at local copies" in last
