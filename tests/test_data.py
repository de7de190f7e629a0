"""Ray Data pipeline on small corpora: malformed records counted, samples correct, every input format read, and the
training stream (two shuffled epochs, independence of blocks, resume at another worker count, packing) against
samples built independently from fully tokenised documents."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from endprompt_ray.config.loader import load_config
from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.data.dataset import anchor_spec, build_dataset, build_stream, data_report
from endprompt_ray.method.anchoring import build_samples, pack_short_documents

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
    dataset, stats = build_dataset(cfg, tokenizer, shuffle=False)  # corpus order
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


def test_every_format_reads_the_same_documents(local_ray, tmp_path, tiny_tokenizer):
    docs = generate_documents(6, seed=5)
    (tmp_path / "txt").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "txt" / f"doc{i}.txt").write_text(d)
    pq.write_table(pa.table({"content": docs}), tmp_path / "c.parquet")
    import datasets

    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "hf"))
    datasets.Dataset.from_dict({"text": docs, "id": list(range(6))}).save_to_disk(str(tmp_path / "hf3"), num_shards=3)
    assert len(list((tmp_path / "hf3").glob("*.arrow"))) == 3
    cases = [([tmp_path / "txt"], {}), ([tmp_path / "c.parquet"], {"data.text_field": "content"}),
             ([tmp_path / "hf"], {}), ([tmp_path / "hf3"], {})]
    fingerprints = set()
    for paths, extra in cases:
        source, stats = build_stream(_cfg(paths, **extra), tiny_tokenizer)
        report = data_report(stats)
        assert report["documents"] == 6, (paths, report)
        fingerprints.add(source.fingerprint)  # the tokenised corpus, in order
    assert len(fingerprints) == 1


# ---- the training stream ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    """Long reports and short notes (10-40 tokens: packed), interleaved; in one file and split over four."""
    rng = np.random.default_rng(6)
    notes = [f"Note {i}: {d[: int(rng.integers(30, 150))]}" for i, d in enumerate(generate_documents(40, seed=8))]
    docs = list(rng.permutation(generate_documents(16, seed=4) + notes))
    root = tmp_path_factory.mktemp("mixed")
    lines = [json.dumps({"text": d}) + "\n" for d in docs]
    (root / "one.jsonl").write_text("".join(lines))
    (root / "four").mkdir()
    for k, start in enumerate([0, 5, 23, 40]):
        (root / "four" / f"part{k}.jsonl").write_text("".join(lines[start:[5, 23, 40, len(lines)][k]]))
    return root, docs


def _stream_cfg(path, **extra):
    return _cfg([path], **{"method.anchor": "random", **extra})


@pytest.fixture(scope="module")
def stream(local_ray, mixed_corpus, tiny_tokenizer):
    root, _ = mixed_corpus
    cfg = _stream_cfg(root / "one.jsonl")
    source, summary = build_stream(cfg, tiny_tokenizer)
    return source, data_report(summary), anchor_spec(cfg, tiny_tokenizer)


def _independent(docs, spec, tokenizer):
    """The samples' tokens from fully tokenised documents, packed over the whole corpus at once."""
    full = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    units, packs, dropped = pack_short_documents(full, spec.min_document_tokens, spec.eos_id)
    return build_samples(units, spec)[0]["input_ids"], full, packs, dropped


def _rows(array):
    return sorted(row.tobytes() for row in array.astype(np.int64))


def test_shuffled_epochs_see_every_sample_once_with_new_anchors(stream, mixed_corpus, tiny_tokenizer):
    source, report, spec = stream
    docs = mixed_corpus[1]
    expected, full, packs, dropped = _independent(docs, spec, tiny_tokenizer)
    n = source.samples_per_epoch
    assert report["documents"] == len(docs) and report["samples"] == n == len(expected)
    assert (report["packs"], report["dropped_pack_remainder"]) == (packs, dropped) and packs > 5
    assert report["truncated"] == sum(len(ids) > sum(spec.token_span) for ids in full) > 10
    assert report["tokenised_chars"] < report["text_chars"] / 2  # the heads of long documents only
    out = source.samples(np.arange(2 * n))
    assert all(a.dtype == np.int32 for a in out.values())
    epochs = [out["input_ids"][:n], out["input_ids"][n:]]
    for ids in epochs:  # truncated tokenisation, shuffled: the same samples as from whole documents
        assert _rows(ids) == _rows(expected) and len(set(_rows(ids))) == n
    assert (epochs[0] != epochs[1]).any(axis=1).mean() > 0.8  # another order
    b = spec.prompt_length
    starts = {e: {row[: P - b].tobytes(): pos[P - b] for row, pos in zip(epochs[e], out["position_ids"][e * n:])}
              for e in (0, 1)}
    assert all(P - b <= s <= L - b for s in starts[0].values())
    assert np.mean([starts[0][k] != starts[1][k] for k in starts[0]]) > 0.8  # new anchors in the new epoch
    # a sample of one document is exactly what that document builds with its text's key in that epoch
    by_text = {t: i for i, t in enumerate(docs)}
    for e in (0, 1):
        for text in [t for t in docs if t.startswith("Report")][:4]:
            key = np.array([int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")],
                           dtype=np.uint64)
            want, _ = build_samples([full[by_text[text]]], spec, keys=key, epoch=e)
            row = next(i for i in range(n) if (epochs[e][i] == want["input_ids"][0]).all())
            np.testing.assert_array_equal(out["position_ids"][e * n + row], want["position_ids"][0])


def test_order_does_not_depend_on_blocks_batches_files_or_actors(stream, mixed_corpus, tiny_tokenizer):
    import ray

    source, _, _ = stream
    context = ray.data.DataContext.get_current()
    before = context.target_max_block_size
    context.target_max_block_size = 2048  # bytes: many small blocks
    try:
        other, _ = build_stream(_stream_cfg(mixed_corpus[0] / "four", **{"data.batch_size": 3,
                                                                           "data.tokenizer_actors": 2}),
                                tiny_tokenizer)
    finally:
        context.target_max_block_size = before
    assert len(other.blocks) > len(source.blocks) and other.fingerprint == source.fingerprint
    positions = np.arange(2 * source.samples_per_epoch + 5)
    want, got = source.samples(positions), other.samples(positions)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_resume_at_another_worker_count_skips_exactly_the_trained_samples(stream):
    """2 workers for 3 steps, then 1 worker (twice the accumulation: the same global batch of 4) through the second
    epoch, each worker a separate process holding its own copy of the source."""
    import ray

    source, _, _ = stream
    n = source.samples_per_epoch

    @ray.remote(num_cpus=0)
    def train(source, start, steps, accum, rank, world):
        out = []
        for step in range(steps):
            out += [b["input_ids"] for b in source.micro_batches(start + step * 4, 2, accum, rank, world)]
        return np.concatenate(out), sorted(source._cache)

    first = ray.get([train.remote(source, 0, 3, 1, rank, 2) for rank in (0, 1)])
    rest, fetched = ray.get(train.remote(source, 12, (2 * n - 12) // 4, 2, 0, 1))
    seen = np.concatenate([first[0][0][:2], first[1][0][:2], first[0][0][2:4], first[1][0][2:4],
                           first[0][0][4:], first[1][0][4:], rest])  # in step order
    want = source.samples(np.arange(len(seen)))["input_ids"]
    np.testing.assert_array_equal(seen, want)  # exactly the uninterrupted stream's samples
    for epoch in range(len(seen) // n):
        part = seen[epoch * n:(epoch + 1) * n]
        assert len(set(_rows(part))) == n  # within an epoch, no sample twice
    late, blocks = ray.get(train.remote(source, 4 * (2 * n // 4), 1, 1, 0, 1))
    members = np.concatenate([source.units.documents_of(u) for u in source._orders.units_at(
        np.arange(4 * (2 * n // 4), 4 * (2 * n // 4) + 2))[1]])
    assert set(blocks) == {int(np.searchsorted(source.block_starts, d, side="right")) - 1 for d in members}


def test_packing_loses_only_a_counted_final_remainder(stream, mixed_corpus, tiny_tokenizer):
    source, report, spec = stream
    _, full, _, _ = _independent(mixed_corpus[1], spec, tiny_tokenizer)
    short = [i for i, ids in enumerate(full) if len(ids) < spec.min_document_tokens]
    members = np.sort(source.units.members)
    assert len(np.unique(members)) == len(members)  # no document in two samples
    lost = sorted(set(range(len(full))) - set(members))
    assert len(lost) == report["dropped_pack_remainder"] and set(lost) <= set(short)
    assert all(i > max(set(short) - set(lost)) for i in lost)  # the last short documents, after the last pack
    per_batch = sum(pack_short_documents(full[k:k + 8], spec.min_document_tokens, spec.eos_id)[2]
                    for k in range(0, len(full), 8))
    assert per_batch > len(lost)  # packing batch by batch, as before, lost a remainder in every batch


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


def test_the_anchor_spec_carries_every_method_setting_and_the_tokenizer_facts(tiny_tokenizer):
    overrides = {"physical_length": 128, "target_length": 1024, "prompt_source": "tail", "tail_length": 7,
                 "anchor": "fixed", "anchor_offset": 5, "mask": "segment1", "short_docs": "skip", "pose_chunks": 3}
    cfg = load_config(None, [f"method.{k}={v}" for k, v in overrides.items()] + ["run.seed=9"])
    spec = anchor_spec(cfg, tiny_tokenizer)
    assert {k: getattr(spec, k) for k in overrides} == overrides
    assert (spec.method, spec.seed, spec.eos_id) == ("endprompt", 9, tiny_tokenizer.eos_token_id)
    rope_only = anchor_spec(load_config(None, ["method.kind=rope_only"]), tiny_tokenizer)
    assert rope_only.method == "contiguous" and rope_only.anchor == "random"  # the config's default, not the spec's
