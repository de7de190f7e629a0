"""Ray Data pipeline: corpus files -> records -> token ids (actor pool) -> the training stream.

Ray Data reads and tokenises the corpus once and keeps the result in Ray's object store: one row per valid document,
its key (a hash of its text) and its token ids as int32, cut to the head and tail the method reads
(`AnchorSpec.token_span`), tokenising only windows of long texts. Which samples train in which step is then pure
arithmetic over document positions (stream.py), and a `SampleSource` builds the samples of any stream positions:
training workers fetch only the blocks holding their own samples' documents.

Why not let Ray Data order and split the samples: `random_shuffle(seed=...)` permutes within and between blocks, so
its order changes with the block layout; `iter_batches(local_shuffle_seed=...)` shuffles whatever blocks reach one
consumer first; `streaming_split` hands blocks to whichever worker asks ("OutputSplitter does not provide any
ordering guarantees"); `sort` on a hashed key would fix the order but costs an all-to-all pass per epoch and still
leaves the split to block boundaries. The one guarantee used is `preserve_order`: the tokenised rows come out in
corpus order (files sorted, records in file order) whatever the blocks, batches or CPUs.

Bad records (invalid JSON, missing or non-string text field, empty text, undecodable bytes) are counted, not fatal.
Counts go to a small actor keyed by a fingerprint of each batch, so a retried task does not count twice.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from endprompt_ray.config.schema import DataConfig, ExtendConfig
from endprompt_ray.corpora.recall import long_recall_documents
from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.corpora.toy import toy_documents
from endprompt_ray.data.sources import is_remote, resolve_remote, single_format
from endprompt_ray.data.tokenize import encode_spans, rust_tokenizer, text_keys
from endprompt_ray.errors import ConfigError
from endprompt_ray.method.anchoring import AnchorSpec, build_samples
from endprompt_ray.method.stream import Orders, Units, plan_units, step_positions
from endprompt_ray.models.toy import ToyBaseSpec

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


@dataclass(frozen=True)
class DataSummary:
    report: dict  # records read, skipped by reason, documents, tokens cut, samples per epoch, packs, ...


def data_report(summary: DataSummary) -> dict[str, int]:
    """Totals of records read, skipped by reason, samples per epoch (`summary` from `build_stream`)."""
    return dict(summary.report)


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
    `tokenizer`, a window each, held apart from its pretraining corpus by seed), recall episodes at the target
    length (corpora/recall.py, no evaluation format), or plain station reports."""
    if cfg.demo_corpus == "recall":
        if tokenizer is None:
            raise ConfigError("data.demo_corpus=recall needs the model's tokenizer to size its documents")
        return long_recall_documents(tokenizer, cfg.demo_documents, seed=DEMO_RETRIEVAL_SEED)
    if cfg.demo_corpus == "retrieval" and tokenizer is not None:
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
        return _read_arrow_shards([f["filename"] for f in hf.cache_files], cfg.text_field, cfg.cpus_per_task), fmt
    return _read_format([str(f) for f in files], fmt, cfg.text_field, cfg.cpus_per_task), fmt  # sorted: the order


def _read_arrow_shards(files: list[str], text_field: str, num_cpus: float) -> ray.data.Dataset:
    """The text column of a dataset saved with `save_to_disk`, read shard by shard in Ray tasks, in shard order.
    (ray.data.from_huggingface would copy the whole table from the driver into the object store.) The shards are
    Arrow streams; save_to_disk writes them with any select/shuffle already applied."""

    def read(batch: dict) -> pa.Table:
        return pa.concat_tables(pa.ipc.open_stream(pa.memory_map(str(path))).read_all().select([text_field])
                                for path in batch["path"]).rename_columns([RECORD])

    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
        read, batch_size=1, num_cpus=num_cpus)


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

class Tokenize:
    """Actor-pool UDF: records -> {key, input_ids (int32, cut to the method's span)}. Each actor receives the
    driver's tokenizer once (no model download on data nodes), as its Rust core where it has one
    (see `rust_tokenizer`)."""

    def __init__(self, tokenizer, fmt: str, text_field: str, stats, span: tuple[int, int]) -> None:
        self.tokenizer, self.fmt, self.text_field, self.stats, self.span = tokenizer, fmt, text_field, stats, span

    def __call__(self, batch: dict) -> pa.Table:
        records = list(batch[RECORD])
        texts, counts = extract_texts(records, self.fmt, self.text_field)
        ids, cut = encode_spans(self.tokenizer, texts, *self.span)
        ray.get(self.stats.add.remote("read", _fingerprint(r if isinstance(r, bytes) else str(r).encode()
                                                           for r in records), dict(counts + cut)))
        return pa.table({"key": pa.array(text_keys(texts), type=pa.uint64()),
                         "input_ids": pa.array(ids, type=pa.list_(pa.int32()))})


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
    return AnchorSpec.from_settings(m, method=kind, prompt_ids=prompt_ids, eos_id=tokenizer.eos_token_id,
                                    seed=cfg.run.seed, prefix_ids=prefix).validate()


# ---- the training stream ---------------------------------------------------------------------------------------------

class SampleSource:
    """The training samples at any global stream positions (stream.py), built from the tokenised documents that the
    driver materialised once. Picklable: it travels to training workers and Ray Data tasks, which fetch only the
    blocks holding the documents of the samples they build, so a resumed run reads nothing it skips."""

    def __init__(self, blocks: list, block_starts: np.ndarray, units, spec: AnchorSpec, seed: int, shuffle: bool,
                 samples_per_epoch: int) -> None:
        self.blocks, self.block_starts, self.units_ref = blocks, block_starts, units  # units: a ref to stream.Units
        self.spec, self.seed, self.shuffle, self.samples_per_epoch = spec, seed, shuffle, samples_per_epoch
        self.fingerprint = ""  # of the tokenised corpus (document keys and token counts): set by build_stream
        self._units: Units | None = None
        self._orders = Orders(samples_per_epoch, seed, shuffle)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:  # the plan travels as its ref; caches are rebuilt where the copy runs
        return {**self.__dict__, "_units": None, "_cache": {},
                "_orders": Orders(self.samples_per_epoch, self.seed, self.shuffle)}

    @property
    def units(self) -> Units:
        """The samples of an epoch in corpus order, as documents (stream.plan_units)."""
        return self._plan()

    def epoch_of(self, position: int) -> int:
        return position // self.samples_per_epoch

    def micro_batches(self, start: int, micro_batch: int, grad_accum: int, rank: int, world: int) -> list[dict]:
        """The micro-batches of worker `rank` of `world` in the optimizer step that begins at stream position
        `start` (samples consumed so far): dicts of int32 arrays [micro_batch, sequence_length]."""
        return [self.samples(p) for p in step_positions(start, micro_batch, grad_accum, rank, world)]

    def samples(self, positions) -> dict[str, np.ndarray]:
        """{"input_ids", "position_ids", "labels"} (int32, one row per position) at global stream positions."""
        if self.samples_per_epoch == 0:
            raise ConfigError("the corpus yields no training samples (see the data report)")
        units = self._plan()
        epochs, picked = self._orders.units_at(np.asarray(positions, dtype=np.int64))
        docs = [self._unit_tokens(units, u) for u in picked]
        out = {k: np.empty((len(picked), self.spec.sequence_length), dtype=np.int32)
               for k in ("input_ids", "position_ids", "labels")}
        for epoch in np.unique(epochs):  # a step may straddle two epochs
            rows = np.flatnonzero(epochs == epoch)
            built, _ = build_samples([docs[r] for r in rows], self.spec, keys=units.keys[picked[rows]],
                                     epoch=int(epoch))
            for key, array in out.items():
                array[rows] = built[key]
        return out

    def _plan(self) -> Units:
        if self._units is None:
            self._units = ray.get(self.units_ref)
        return self._units

    def _unit_tokens(self, units: Units, unit: int) -> np.ndarray:
        """A unit's tokens: one document, or short documents joined with EOS (as `pack_short_documents` joins)."""
        parts = []
        for doc in units.documents_of(unit):
            if parts:
                parts.append(np.array([self.spec.eos_id], dtype=np.int32))
            parts.append(self._document(int(doc)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _document(self, doc: int) -> np.ndarray:
        block = int(np.searchsorted(self.block_starts, doc, side="right")) - 1
        if block not in self._cache:
            if len(self._cache) >= 64:  # zero-copy views of the object store on the same node: cheap to keep
                self._cache.pop(next(iter(self._cache)))
            column = ray.get(self.blocks[block]).column("input_ids").combine_chunks()
            self._cache[block] = (column.offsets.to_numpy(), column.values.to_numpy())
        offsets, values = self._cache[block]
        row = doc - self.block_starts[block]
        return values[offsets[row]:offsets[row + 1]]


@ray.remote(num_cpus=0)
def _block_index(block: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(token counts, keys) of one block's documents: the driver plans the stream without fetching any tokens."""
    ids = block.column("input_ids").combine_chunks()
    return np.diff(ids.offsets.to_numpy()), block.column("key").to_numpy()


def build_stream(cfg: ExtendConfig, tokenizer, shuffle: bool | None = None) -> tuple[SampleSource, DataSummary]:
    """Read and tokenise the corpus once (materialised in Ray's object store) and plan the training stream:
    (the SampleSource that training workers draw their micro-batches from, the data summary).
    `shuffle` (default: data.shuffle) orders every epoch's samples by a permutation keyed by run.seed."""
    shuffle = cfg.data.shuffle if shuffle is None else shuffle
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # rows in corpus order (see top)
    spec = anchor_spec(cfg, tokenizer)
    stats = DataStats.remote()
    records, fmt = read_records(cfg.data, tokenizer)
    documents = records.map_batches(
        Tokenize, batch_size=cfg.data.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.data.tokenizer_actors),
        num_cpus=cfg.data.cpus_per_task,
        fn_constructor_args=(rust_tokenizer(tokenizer), fmt, cfg.data.text_field, stats, spec.token_span))
    blocks = documents.materialize().to_arrow_refs()  # in dataset order: the corpus order
    index = ray.get([_block_index.remote(block) for block in blocks])
    lengths = np.concatenate([np.zeros(0, dtype=np.int64)] + [counts for counts, _ in index])
    keys = np.concatenate([np.zeros(0, dtype=np.uint64)] + [k for _, k in index])
    block_starts = np.concatenate([[0], np.cumsum([len(k) for _, k in index])]).astype(np.int64)
    units = plan_units(lengths, keys, spec.min_document_tokens, pack=spec.short_docs == "pack")
    report = {**ray.get(stats.totals.remote()), **units.counts}
    ray.kill(stats)
    skipped = int((lengths == 0).sum())
    if skipped:
        report["skipped_no_tokens"] = skipped
    if not len(units):
        raise ConfigError(f"the corpus yields no training samples: {report.get('documents', 0)} documents, "
                          f"none (or no pack of them) with the {spec.min_document_tokens} tokens a sample needs "
                          f"(data report: {report}); use longer documents, method.short_docs=pack, or a smaller "
                          "method.physical_length")
    source = SampleSource(blocks, block_starts, ray.put(units), spec, cfg.run.seed, shuffle, len(units))
    digest = hashlib.blake2b(keys.tobytes() + lengths.astype(np.int64).tobytes(), digest_size=16)
    source.fingerprint = digest.hexdigest()  # what a resume can check against the checkpoint's
    return source, DataSummary(report)


def _samples_at(batch: dict, source: SampleSource) -> dict:
    return source.samples(batch["data"])


def build_dataset(cfg: ExtendConfig, tokenizer, shuffle: bool | None = None):
    """(epoch 0 of the training stream as a Ray Dataset of samples in stream order, the data summary): for
    consumers that iterate a Dataset. Each epoch of the stream itself comes from `SampleSource.samples`."""
    source, summary = build_stream(cfg, tokenizer, shuffle)
    n, size = source.samples_per_epoch, cfg.data.batch_size
    # blocks of positions made on the driver: no read task that would wait for a CPU beside CPU training workers
    positions = ray.data.from_numpy([np.arange(k, min(k + size, n)) for k in range(0, n, size)])
    samples = positions.map_batches(
        _samples_at, batch_size=cfg.data.batch_size, batch_format="numpy", num_cpus=cfg.data.cpus_per_task,
        fn_kwargs={"source": source})
    return samples, summary
