"""Ray Data pipeline: corpus files -> records -> token ids (actor pool) -> anchored fixed-length samples.

Bad records (invalid JSON, missing or non-string text field, empty text, undecodable bytes) are counted, not fatal.
Counts go to a small actor keyed by a fingerprint of each batch, so re-reading data in a later epoch or a
retried task does not count the same records twice; `data_report()` reads the totals at the end.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from .anchoring import AnchorSpec, build_samples
from .config import ConfigError, DataConfig, ExtendConfig
from .demo_corpus import generate_documents
from .sources import is_remote, resolve_remote, single_format

RECORD = "record"  # column of raw records: one JSON line, or one whole text document
DEMO_RETRIEVAL_SEED = 7  # the extension demo's episodes; the toy base was pretrained on seed 0


# ---- counting bad input --------------------------------------------------------------------------------------------

@ray.remote(num_cpus=0)
class DataStats:
    def __init__(self) -> None:
        self._by_batch: dict[str, dict[str, int]] = {}

    def add(self, stage: str, fingerprint: str, counts: dict[str, int]) -> None:
        self._by_batch[f"{stage}:{fingerprint}"] = counts

    def totals(self) -> dict[str, int]:
        total: Counter = Counter()
        for counts in self._by_batch.values():
            total.update(counts)
        return dict(total)


def _fingerprint(values) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for value in values:
        digest.update(value if isinstance(value, bytes) else np.asarray(value).tobytes())
    return digest.hexdigest()


def data_report(stats) -> dict[str, int]:
    """Totals of records read, skipped by reason, samples built (`stats` from `build_dataset`)."""
    return ray.get(stats.totals.remote())


# ---- reading ---------------------------------------------------------------------------------------------------------

def detect_format(paths: list[Path], declared: str) -> str:
    if declared != "auto":
        return declared
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / "dataset_info.json").exists():
        return "hf_disk"
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    return single_format([str(f) for f in files], declared, "data.paths")


def demo_texts(cfg: DataConfig, tokenizer=None) -> list[str]:
    """The generated corpus used when data.paths is empty: the toy base's retrieval episodes (sized with
    `tokenizer`, a window each, held apart from its pretraining corpus by seed) or plain station reports."""
    if cfg.demo_corpus == "retrieval" and tokenizer is not None:
        from .toybase import ToyBaseSpec, toy_documents

        return toy_documents(ToyBaseSpec(), tokenizer, count=cfg.demo_documents, seed=DEMO_RETRIEVAL_SEED)
    return generate_documents(cfg.demo_documents, seed=0)


def read_records(cfg: DataConfig, tokenizer=None) -> tuple[ray.data.Dataset, str]:
    """A dataset with one `record` column, and the format that tells the tokeniser how to parse it."""
    if not cfg.paths:  # the generated demo corpus travels through the object store: no shared disk needed
        lines = [json.dumps({"text": t}) for t in demo_texts(cfg, tokenizer)]
        return ray.data.from_items([{RECORD: line} for line in lines], override_num_blocks=4), "jsonl"
    if any(is_remote(p) for p in cfg.paths):  # s3://, gs://, hf://datasets/...: Ray Data streams it on the workers
        corpus = resolve_remote(cfg.paths, cfg.format)
        if corpus.format == "parquet" and corpus.filesystem is not None:
            _check_parquet_column(corpus.files[0], cfg.text_field, corpus.filesystem)
        return _read_format(corpus.files, corpus.format, cfg.text_field, cfg.cpus_per_task,
                            corpus.filesystem), corpus.format
    paths = [Path(p).expanduser() for p in cfg.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"data.paths: {missing[0]} does not exist; fix data.paths (files or folders of "
                          ".jsonl/.parquet/.txt, or an HF dataset saved to disk), or leave it empty for the demo corpus")
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    if not files or all(f.stat().st_size == 0 for f in files):
        raise ConfigError(f"data.paths {cfg.paths} contain no data (no files, or only empty files)")
    fmt = detect_format(paths, cfg.format)
    if fmt == "parquet":
        _check_parquet_column(str(next(f for f in files if f.suffix == ".parquet")), cfg.text_field)
    if fmt == "hf_disk":
        import datasets

        hf = datasets.load_from_disk(str(paths[0]))
        if isinstance(hf, datasets.DatasetDict):
            hf = hf["train"] if "train" in hf else hf[next(iter(hf))]
        if cfg.text_field not in hf.column_names:
            raise ConfigError(f"HF dataset {paths[0]} has no column {cfg.text_field!r} (columns: {hf.column_names}); "
                              "set data.text_field")
        return ray.data.from_huggingface(hf.select_columns([cfg.text_field])).rename_columns(
            {cfg.text_field: RECORD}), fmt
    return _read_format([str(p) for p in paths], fmt, cfg.text_field, cfg.cpus_per_task), fmt


def _check_parquet_column(path: str, text_field: str, filesystem=None) -> None:
    import pyarrow.parquet as pq

    columns = pq.read_schema(path, filesystem=filesystem).names  # the footer only
    if text_field not in columns:
        raise ConfigError(f"parquet file {path} has no column {text_field!r} (columns: {columns}); set data.text_field")


def _read_format(paths: list[str], fmt: str, text_field: str, num_cpus: float, filesystem=None) -> ray.data.Dataset:
    # Read tasks ask for the same small CPU share as the other stages: at Ray Data's default of 1 CPU a read could
    # never be scheduled beside CPU training workers on a small machine, and training would wait for data forever.
    cpus = {"num_cpus": num_cpus}  # the read and the rename below fuse into one task only with equal resources
    opts = {"ray_remote_args": cpus, "filesystem": filesystem}
    if fmt == "jsonl":
        records = ray.data.read_text(paths, drop_empty_lines=True, **opts), "text"
    elif fmt == "text":  # one document per file
        records = ray.data.read_binary_files(paths, **opts), "bytes"
    elif fmt == "parquet":
        records = ray.data.read_parquet(paths, columns=[text_field], **opts), text_field
    else:
        raise ConfigError(f"data.format={fmt!r} is not one of auto, jsonl, parquet, text, hf_disk")
    dataset, column = records
    return dataset.rename_columns({column: RECORD}, num_cpus=num_cpus)


def extract_texts(records, fmt: str, text_field: str) -> tuple[list[str], Counter]:
    """Valid document texts from raw records, and counts of what was skipped and why."""
    counts: Counter = Counter(records=len(records))
    texts: list[str] = []
    for record in records:
        if fmt == "jsonl":
            try:
                obj = json.loads(record)
            except (json.JSONDecodeError, TypeError):
                counts["skipped_bad_json"] += 1
                continue
            text = obj.get(text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                counts["skipped_missing_text"] += 1
                continue
        elif fmt == "text":
            try:
                text = bytes(record).decode("utf-8")
            except UnicodeDecodeError:
                counts["skipped_not_utf8"] += 1
                continue
        else:
            text = record
            if not isinstance(text, str):
                counts["skipped_missing_text"] += 1
                continue
        if not text.strip():
            counts["skipped_empty_text"] += 1
            continue
        texts.append(text)
    counts["documents"] = len(texts)
    return texts, counts


# ---- the two transforms ------------------------------------------------------------------------------------------------

def rust_tokenizer(tokenizer):
    """The Rust `tokenizers.Tokenizer` inside a Hugging Face fast tokenizer, set up as the wrapper's plain call sets it
    up (no truncation, no padding, its special-token splitting), so its `encode_batch` gives exactly the ids of
    `tokenizer(texts, add_special_tokens=False)`. Shipping it instead of the wrapper spares every tokenizer actor the
    transformers import when it unpickles its tokenizer: most of a second on the critical path of every pipeline
    start (each epoch starts a new actor pool), during which no document is tokenised.
    Returns `tokenizer` unchanged when it has no Rust core or encodes in Python itself (a subclass that overrides it).
    """
    from transformers import TokenizersBackend

    if (not isinstance(tokenizer, TokenizersBackend) or hasattr(tokenizer, "_switch_to_input_mode")
            or type(tokenizer)._encode_plus is not TokenizersBackend._encode_plus):
        return tokenizer
    from tokenizers import Tokenizer

    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the driver's tokenizer stays as it was
    core.no_truncation()
    core.no_padding()
    core.encode_special_tokens = bool(tokenizer.split_special_tokens)
    return core


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens, from a `rust_tokenizer` result (a Rust core or a Hugging Face tokenizer)."""
    from tokenizers import Tokenizer

    if not texts:
        return []
    if isinstance(tokenizer, Tokenizer):
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


class Tokenize:
    """Actor-pool UDF: each actor receives the driver's tokenizer once (no model download on data nodes), as its
    Rust core where it has one (see `rust_tokenizer`)."""

    def __init__(self, tokenizer, fmt: str, text_field: str, stats) -> None:
        self.tokenizer, self.fmt, self.text_field, self.stats = tokenizer, fmt, text_field, stats

    def __call__(self, batch: dict) -> pa.Table:
        records = list(batch[RECORD])
        texts, counts = extract_texts(records, self.fmt, self.text_field)
        ids = encode(self.tokenizer, texts)
        ray.get(self.stats.add.remote("read", _fingerprint(r if isinstance(r, bytes) else str(r).encode()
                                                           for r in records), dict(counts)))
        return pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.int32()))})


def anchor_batch(batch: dict, spec: AnchorSpec, stats) -> dict:
    """Stateless batch transform (runs as parallel tasks): token lists -> {input_ids, position_ids, labels}."""
    docs = list(batch["input_ids"])
    samples, counts = build_samples(docs, spec)
    counts = {k: v for k, v in counts.items() if k != "documents"}
    ray.get(stats.add.remote("anchor", _fingerprint(docs), counts))
    return samples


def bos_prefix(tokenizer) -> tuple[int, ...]:
    """(BOS,) when the tokenizer itself puts BOS before a text, else (). Evaluation encodes its prompts with the
    tokenizer's own special tokens, so training samples start the same way; a tokenizer that merely defines a BOS
    (GPT-2 style, e.g. SmolLM2) never sees one at the start of a text and must not be trained on it."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return ()
    encoded = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return (bos,) if encoded[:1] == [bos] and plain[:1] != [bos] else ()


def anchor_spec(cfg: ExtendConfig, tokenizer) -> AnchorSpec:
    """The method settings with the tokenizer's facts (template ids, EOS, BOS prefix) filled in."""
    m = cfg.method
    kind = "contiguous" if m.kind == "rope_only" else m.kind
    prompt_ids = tuple(tokenizer(m.prompt_text, add_special_tokens=False)["input_ids"]) if m.prompt_text else ()
    prefix = bos_prefix(tokenizer)
    return AnchorSpec(method=kind, physical_length=m.physical_length, target_length=m.target_length,
                      prompt_source=m.prompt_source, prompt_ids=prompt_ids, tail_length=m.tail_length,
                      anchor=m.anchor, anchor_offset=m.anchor_offset, mask=m.mask, short_docs=m.short_docs,
                      eos_id=tokenizer.eos_token_id, pose_chunks=m.pose_chunks, seed=cfg.run.seed,
                      prefix_ids=prefix).validate()


def build_dataset(cfg: ExtendConfig, tokenizer):
    """(the lazy training dataset, its DataStats actor); nothing runs until Ray Train workers iterate their shards."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # deterministic for fixed workers
    spec = anchor_spec(cfg, tokenizer)
    stats = DataStats.remote()
    records, fmt = read_records(cfg.data, tokenizer)
    tokens = records.map_batches(
        Tokenize, batch_size=cfg.data.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.data.tokenizer_actors),
        num_cpus=cfg.data.cpus_per_task,
        fn_constructor_args=(rust_tokenizer(tokenizer), fmt, cfg.data.text_field, stats))
    samples = tokens.map_batches(anchor_batch, batch_size=cfg.data.batch_size, batch_format="numpy",
                                 num_cpus=cfg.data.cpus_per_task, fn_kwargs={"spec": spec, "stats": stats})
    return samples, stats
