"""Ray Data pipeline on small corpora: malformed records counted, samples correct, every input format read."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from endprompt_ray.anchoring import build_samples
from endprompt_ray.config import load_config
from endprompt_ray.data import anchor_spec, build_dataset, data_report
from endprompt_ray.demo_corpus import generate_documents

P, L = 64, 1024


def _cfg(paths, **extra):
    overrides = [f"method.physical_length={P}", f"method.target_length={L}", "data.batch_size=8", "method.anchor=fixed",
                 f"data.paths={json.dumps([str(p) for p in paths])}"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


@pytest.fixture()
def jsonl_corpus(tmp_path):
    docs = generate_documents(20, seed=3)
    lines = [json.dumps({"text": d}) for d in docs]
    lines[3:3] = ["{not json", json.dumps({"body": "no text field"}), json.dumps({"text": "   "}),
                  json.dumps({"text": 42}), json.dumps(["a", "list"])]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n\n")  # the blank line is not a record
    return path, docs


def test_malformed_rows_counted_and_samples_correct(local_ray, jsonl_corpus, tiny_tokenizer):
    tokenizer = tiny_tokenizer
    path, docs = jsonl_corpus
    cfg = _cfg([path], **{"method.short_docs": "skip"})
    dataset, stats = build_dataset(cfg, tokenizer)
    rows = dataset.take_all()
    report = data_report(stats)
    assert report["records"] == 25 and report["documents"] == 20
    assert report["skipped_bad_json"] == 1
    assert report["skipped_missing_text"] == 3  # wrong field, non-string text, not an object
    assert report["skipped_empty_text"] == 1
    long_docs = [d for d in docs if len(tokenizer(d, add_special_tokens=False)["input_ids"]) >= P - 1]
    assert report["samples"] == len(rows) == len(long_docs)
    assert report["skipped_short"] == 20 - len(long_docs)

    prompt = tokenizer("This is the end of text, please pay attention here", add_special_tokens=False)["input_ids"]
    b = len(prompt)
    first = rows[0]
    expected = [tokenizer.bos_token_id] + tokenizer(long_docs[0], add_special_tokens=False)["input_ids"][:P - 1 - b]
    np.testing.assert_array_equal(first["input_ids"][: P - b], expected)
    np.testing.assert_array_equal(first["input_ids"][P - b:], prompt)
    np.testing.assert_array_equal(first["position_ids"], list(range(P - b)) + list(range(L - b, L)))

    again, _ = build_dataset(cfg, tokenizer)  # deterministic: same rows in the same order
    for a, b_row in zip(rows, again.take_all()):
        np.testing.assert_array_equal(a["input_ids"], b_row["input_ids"])


def test_every_format_reads_the_same_documents(local_ray, tmp_path, tiny_tokenizer):
    docs = generate_documents(6, seed=5)
    (tmp_path / "txt").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "txt" / f"doc{i}.txt").write_text(d)
    pq.write_table(pa.table({"content": docs}), tmp_path / "c.parquet")
    import datasets

    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "hf"))
    cases = [([tmp_path / "txt"], {}), ([tmp_path / "c.parquet"], {"data.text_field": "content"}),
             ([tmp_path / "hf"], {})]
    for paths, extra in cases:
        dataset, stats = build_dataset(_cfg(paths, **extra), tiny_tokenizer)
        dataset.take_all()
        report = data_report(stats)
        assert report["documents"] == 6, (paths, report)


def test_resumed_stream_skips_consumed_batches_across_epochs(local_ray):
    """A resumed run drops exactly the micro-batches it already trained on, even past an epoch boundary."""
    import ray
    import torch

    from endprompt_ray.train import _batches

    dataset = ray.data.from_items([{"input_ids": [i, i]} for i in range(6)])  # 3 micro-batches of 2 per epoch
    straight = _batches(dataset, 2, torch.device("cpu"))
    expected = [next(straight) for _ in range(7)]
    resumed = _batches(dataset, 2, torch.device("cpu"), skip=4)
    for epoch_batch in expected[4:]:
        epoch, batch = next(resumed)
        assert epoch == epoch_batch[0]
        torch.testing.assert_close(batch["input_ids"], epoch_batch[1]["input_ids"])
    assert [e for e, _ in expected] == [0, 0, 0, 1, 1, 1, 2]


def _word_tokenizer(adds_bos: bool, bos: str | None = "<s>"):
    """A real fast tokenizer built locally: whitespace words, and a BOS that it adds itself or only defines."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "</s>", "<pad>", "<unk>"] + [f"w{i}" for i in range(20)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        core.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.mark.parametrize("adds_bos, bos", [(True, "<s>"), (False, "<s>"), (False, None)])
def test_bos_prefix_only_when_the_tokenizer_adds_one(adds_bos, bos):
    """Segment 1 starts as evaluation's encoding starts: with BOS only if the tokenizer itself puts it there."""
    tokenizer = _word_tokenizer(adds_bos, bos)
    assert (tokenizer("w0")["input_ids"][0] == 0) == adds_bos  # what evaluation's add_special_tokens=True gives
    cfg = load_config(None, ["method.physical_length=8", "method.target_length=32", "method.anchor=fixed",
                             "method.prompt_source=continuation", "method.tail_length=2", "method.short_docs=skip"])
    spec = anchor_spec(cfg, tokenizer)
    assert spec.prefix_ids == ((0,) if adds_bos else ())
    doc = tokenizer(" ".join(f"w{i}" for i in range(12)), add_special_tokens=False)["input_ids"]
    assert doc == list(range(4, 16))  # w0..w11
    out, _ = build_samples([doc], spec)
    expected = [0, 4, 5, 6, 7, 8, 9, 10] if adds_bos else [4, 5, 6, 7, 8, 9, 10, 11]
    np.testing.assert_array_equal(out["input_ids"], [expected])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3, 4, 5, 30, 31]])
