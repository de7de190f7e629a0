"""The EndPrompt method and its baselines as pure array functions (NumPy only: no Ray, no torch).

A training sample is a short physical sequence whose position ids may jump. For EndPrompt with physical length P,
target length L and a terminal prompt of b tokens:

    segment 1: the first P - b tokens of a document, position ids 0 .. P-b-1
    segment 2: the terminal prompt, position ids start .. start+b-1 with start in [P-b, L-b]

so segment 2, attending to all of segment 1, sees relative distances up to about L. The terminal prompt is one of:

    template      a fixed text (the paper's end prompt)
    tail          the document's last b tokens, as the reference's random-anchor collator builds it
                  (finetune_suffix_random.py: head + the sample's last b tokens)
    continuation  the b tokens right after segment 1, as the reference's fixed-anchor script builds it
                  (fine_tune_suffix.py: its samples are pre-chunked to P tokens, so their last b tokens
                  continue segment 1)

The baselines come from the same builder: `contiguous` (first P tokens, positions 0..P-1), `full_length` (first L
tokens, positions 0..L-1) and `pose` (PoSE as in its official code, see `pose_layout`).

Every function works on a whole batch: documents are gathered from one flat token array with index arithmetic, and
random draws are keyed by document content, a seed and the epoch, so a sample gets the same draw whatever batch it
lands in, and a new one in every epoch. A sample reads only a document's head and tail (`AnchorSpec.token_span`):
a document cut to them beforehand gives the same samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

IGNORE_INDEX = -100  # the label value that Hugging Face causal-LM losses skip

Method = Literal["endprompt", "contiguous", "full_length", "pose"]
METHODS = ("endprompt", "contiguous", "full_length", "pose")
PROMPT_SOURCES = ("template", "tail", "continuation")
POSE_CONTENT_WINDOW = 5  # official PoSE truncates each document to 5 P tokens before drawing its content skips


class AnchorError(ValueError):
    """An anchoring setting that cannot produce valid samples."""


@dataclass(frozen=True)
class AnchorSettings:
    """The method's settings a user chooses (the config's `method` section adds to them, `AnchorSpec` too); the
    defaults are the reference's (P = 8192, L = 65536, a fixed anchor)."""

    physical_length: int = field(default=8192, metadata={"help": "P: tokens per training sample"})
    target_length: int = field(default=65536, metadata={"help": "L: the context window being trained for"})
    prompt_source: Literal["template", "tail", "continuation"] = field(default="template", metadata={
        "help": "the terminal prompt: template (the prompt text), tail (the document's last b tokens) or "
                "continuation (the b tokens right after segment 1)"})
    tail_length: int = field(default=20, metadata={
        "help": "b for the tail and continuation prompts (reference: 20)"})
    anchor: Literal["fixed", "random"] = field(default="fixed", metadata={
        "help": "fixed: last terminal position L - 1 - anchor_offset; random: start uniform in [P - b, L - b]"})
    anchor_offset: int = field(default=0, metadata={
        "help": "fixed anchor: the last terminal position is L - 1 - anchor_offset"})
    mask: Literal["none", "segment1", "segment2"] = field(default="none", metadata={
        "help": "which segment's tokens get no loss (none: loss on both, as the reference)"})
    short_docs: Literal["pack", "skip"] = field(default="pack", metadata={
        "help": "documents shorter than a sample: pack (joined with EOS) or skip (counted)"})
    pose_chunks: int = field(default=2, metadata={"help": "PoSE: chunks per sample (content and position skips)"})

    def check_lengths(self, method: str, where: str = "") -> None:
        """P and L must be at least 2 and, but for full_length, L must exceed P; `where` prefixes the key names."""
        P, L = self.physical_length, self.target_length
        if P < 2 or L < 2:
            raise AnchorError(f"{where}physical_length={P} and {where}target_length={L} must be at least 2")
        if method != "full_length" and L <= P:
            raise AnchorError(f"{where}target_length={L} must exceed {where}physical_length={P}: nothing would be "
                              "extended. Raise method.target_length or lower method.physical_length.")


@dataclass(frozen=True)
class AnchorSpec(AnchorSettings):
    """Everything the sample builder needs: the settings and the tokenizer's facts; `validate()` explains any
    impossible combination."""

    method: Method = "endprompt"
    prompt_ids: tuple[int, ...] = ()  # the tokenised template, for prompt_source="template"
    eos_id: int | None = None  # joins packed documents
    seed: int = 0
    prefix_ids: tuple[int, ...] = field(default=())  # e.g. BOS, placed at the start of every sample

    @classmethod
    def from_settings(cls, settings: AnchorSettings, **facts) -> "AnchorSpec":
        """The spec of `settings` (any AnchorSettings, e.g. the config's method section) with the given facts."""
        chosen = {f.name: getattr(settings, f.name) for f in dataclasses.fields(AnchorSettings)}
        return cls(**chosen, **facts)

    @property
    def prompt_length(self) -> int:
        """b: tokens in segment 2 (0 for the baselines)."""
        if self.method != "endprompt":
            return 0
        return len(self.prompt_ids) if self.prompt_source == "template" else self.tail_length

    @property
    def sequence_length(self) -> int:
        """Physical tokens per sample."""
        return self.target_length if self.method == "full_length" else self.physical_length

    @property
    def min_document_tokens(self) -> int:
        """Tokens a document needs (after the prefix) to make one sample without reusing any token."""
        needed = self.sequence_length - len(self.prefix_ids)
        if self.method == "endprompt" and self.prompt_source == "template":
            needed -= self.prompt_length
        return needed

    @property
    def token_span(self) -> tuple[int, int]:
        """(head, tail): a sample reads at most a document's first `head` and last `tail` tokens (after the prefix),
        so longer documents can be cut to them (`cut_to_span`) before anchoring without changing any sample."""
        k = len(self.prefix_ids)
        if self.method == "pose":  # content skips reach into the first 5 P tokens of prefix + document
            return POSE_CONTENT_WINDOW * self.physical_length - k, 0
        if self.method == "endprompt" and self.prompt_source == "tail":
            return self.physical_length - k - self.prompt_length, self.prompt_length
        return self.min_document_tokens, 0  # template, continuation, contiguous and full_length read a prefix only

    def validate(self) -> "AnchorSpec":
        P, L, b = self.physical_length, self.target_length, self.prompt_length
        if self.method not in METHODS:
            raise AnchorError(f"method={self.method!r} is not one of {METHODS}")
        self.check_lengths(self.method)
        if len(self.prefix_ids) >= P:
            raise AnchorError(f"prefix of {len(self.prefix_ids)} tokens leaves no room in physical_length={P}")
        if self.method == "endprompt":
            if self.prompt_source not in PROMPT_SOURCES:
                raise AnchorError(f"prompt_source={self.prompt_source!r} is not one of {PROMPT_SOURCES}")
            if self.prompt_source == "template" and not self.prompt_ids:
                raise AnchorError("prompt_source='template' needs a non-empty prompt text")
            if self.prompt_source != "template" and self.tail_length < 1:
                raise AnchorError(f"tail_length={self.tail_length} must be at least 1")
            if b >= P - len(self.prefix_ids):
                raise AnchorError(f"terminal prompt of b={b} tokens does not fit in physical_length={P} "
                                  f"(need P > b + {len(self.prefix_ids)} prefix tokens); shorten the prompt or raise P")
            if self.anchor == "fixed":
                start = L - b - self.anchor_offset
                if self.anchor_offset < 0:
                    raise AnchorError(f"anchor_offset={self.anchor_offset} would put segment 2 past the target "
                                      f"length {L}; use an offset >= 0")
                if start < P - b:
                    raise AnchorError(f"anchor_offset={self.anchor_offset} puts segment 2 at positions {start}.."
                                      f"{start + b - 1}, overlapping segment 1 (0..{P - b - 1}); "
                                      f"use anchor_offset <= {L - P}")
            elif self.anchor != "random":
                raise AnchorError(f"anchor={self.anchor!r} is not 'fixed' or 'random'")
        if self.method == "pose":
            if not 1 <= self.pose_chunks <= P:
                raise AnchorError(f"pose_chunks={self.pose_chunks} must be between 1 and physical_length={P}")
        if self.short_docs == "pack" and self.eos_id is None:
            raise AnchorError("short_docs='pack' joins documents with EOS, but the tokenizer has no eos_token; "
                              "set a tokenizer with an EOS token or use method.short_docs=skip")
        return self


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-spread hash of uint64 values."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def sample_keys(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seed: int, width: int = 16) -> np.ndarray:
    """A uint64 key per document from its length and first `width` tokens: the same document gives the same key."""
    idx = starts[:, None] + np.minimum(np.arange(width)[None, :], lengths[:, None] - 1)  # documents are non-empty
    tokens = flat[idx]
    key = mix64(np.full(len(starts), seed, dtype=np.uint64) ^ lengths.astype(np.uint64))
    with np.errstate(over="ignore"):
        for column in tokens.T.astype(np.uint64):  # `width` vector steps, not per token
            key = mix64(key ^ column)
    return key


def draw_keys(keys: np.ndarray, seed: int, epoch: int = 0) -> np.ndarray:
    """Keys for the random draws of samples with document identities `keys` (uint64, e.g. a hash of each text).
    Epoch 0 keeps the seeded keys; later epochs mix the epoch in, so every epoch draws new anchors and skips."""
    keys = mix64(np.asarray(keys, dtype=np.uint64) ^ mix64(np.uint64(seed % 2**64)))
    return epoch_keys(keys, epoch)


def epoch_keys(keys: np.ndarray, epoch: int) -> np.ndarray:
    if epoch == 0:
        return keys
    return mix64(keys ^ mix64(np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(epoch)))


def cut_to_span(ids: np.ndarray, head: int, tail: int) -> np.ndarray:
    """A document's first `head` and last `tail` tokens when it is longer than both, else the document."""
    return ids if len(ids) <= head + tail else np.concatenate([ids[:head], ids[len(ids) - tail:]])


def uniform_draws(keys: np.ndarray, low, high, stream: int = 0) -> np.ndarray:
    """Integers uniform in [low, high] (inclusive), one per key; `stream` gives independent draws for one key.
    `low` and `high` are ints or per-key arrays (for draws bounded by an earlier draw)."""
    low = np.asarray(low, dtype=np.int64)
    span = (np.asarray(high, dtype=np.int64) - low + 1).astype(np.uint64)
    return low + (mix64(keys ^ mix64(np.uint64(stream + 1) * np.ones_like(keys))) % span).astype(np.int64)


def to_flat(documents: Sequence[Sequence[int]] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat tokens, start offsets, lengths) for a batch of token lists."""
    arrays = [np.asarray(d, dtype=np.int64).reshape(-1) for d in documents]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(arrays) else lengths
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return flat, starts, lengths


def pack_short_documents(documents: Sequence[Sequence[int]], min_tokens: int, eos_id: int
                         ) -> tuple[list[np.ndarray], int, int]:
    """Join consecutive documents shorter than `min_tokens` with EOS until each pack is long enough.

    Long documents pass through untouched. Returns (units, packs_made, documents_dropped): a trailing group that
    never reaches `min_tokens` is dropped and counted. Loops over documents, not tokens.
    """
    units: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    pending_tokens = packs = 0
    for doc in documents:
        doc = np.asarray(doc, dtype=np.int64).reshape(-1)
        if len(doc) == 0:
            continue
        if len(doc) >= min_tokens:
            units.append(doc)
            continue
        pending.append(doc)
        pending_tokens += len(doc) + 1
        if pending_tokens - 1 >= min_tokens:
            joined = np.concatenate([np.append(d, eos_id) for d in pending])[:-1]
            units.append(joined)
            packs += 1
            pending, pending_tokens = [], 0
    return units, packs, len(pending)


def build_samples(documents: Sequence[Sequence[int]], spec: AnchorSpec, keys: np.ndarray | None = None,
                  epoch: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Turn a batch of tokenised documents into fixed-length samples.

    `keys`: one uint64 identity per document (its random draws follow from it, `spec.seed` and `epoch`); without
    them the draws are keyed by each document's length and first tokens. With `keys` every document must already be
    long enough (the training stream packs short documents itself, across the whole corpus).
    Returns ({"input_ids", "position_ids", "labels"}: int64 arrays of shape [n, sequence_length], stats) where
    stats counts documents in, samples out, packs made and documents skipped as too short.
    """
    if keys is not None:
        return _build_keyed(documents, spec, np.asarray(keys, dtype=np.uint64), epoch)
    need = spec.min_document_tokens
    if spec.short_docs == "pack":
        units, packs, dropped = pack_short_documents(documents, need, spec.eos_id)
        skipped_short = 0
    else:
        units = [np.asarray(d, dtype=np.int64).reshape(-1) for d in documents]
        units = [u for u in units if len(u) > 0]
        long_enough = [u for u in units if len(u) >= need]
        packs, dropped, skipped_short = 0, 0, len(units) - len(long_enough)
        units = long_enough
    stats = {"documents": len(documents), "samples": len(units), "packs": packs,
             "skipped_short": skipped_short, "dropped_pack_remainder": dropped}
    flat, starts, lengths = to_flat(units)
    if not units:
        empty = np.zeros((0, spec.sequence_length), dtype=np.int64)
        return {"input_ids": empty, "position_ids": empty, "labels": empty}, stats
    keys = epoch_keys(sample_keys(flat, starts, lengths, spec.seed), epoch)
    return _anchor(flat, starts, lengths, keys, spec), stats


def _build_keyed(documents, spec: AnchorSpec, keys: np.ndarray, epoch: int):
    if len(keys) != len(documents):
        raise AnchorError(f"{len(keys)} keys for {len(documents)} documents")
    flat, starts, lengths = to_flat(documents)
    if (lengths < spec.min_document_tokens).any():
        raise AnchorError(f"a document of {lengths.min()} tokens is shorter than the {spec.min_document_tokens} "
                          "a sample needs; pack or skip short documents before anchoring")
    stats = {"documents": len(documents), "samples": len(documents), "packs": 0, "skipped_short": 0,
             "dropped_pack_remainder": 0}
    if not len(documents):
        empty = np.zeros((0, spec.sequence_length), dtype=np.int64)
        return {"input_ids": empty, "position_ids": empty, "labels": empty}, stats
    return _anchor(flat, starts, lengths, draw_keys(keys, spec.seed, epoch), spec), stats


def _anchor(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, keys: np.ndarray, spec: AnchorSpec
            ) -> dict[str, np.ndarray]:
    # Each sample is read from its unit as the model would see it encoded: the prefix, then the document.
    # `source` holds indices into that sequence, so every method is an index pattern plus position ids.
    n, T = len(starts), spec.sequence_length
    prefix = np.asarray(spec.prefix_ids, dtype=np.int64)
    available = len(prefix) + lengths
    if spec.method == "pose":
        source, position_ids = pose_layout(keys, available, T, spec.target_length, spec.pose_chunks)
    else:
        source = np.broadcast_to(np.arange(T), (n, T)).copy()  # continuation: segment 2 simply reads on past segment 1
        position_ids = source.copy()
    b = spec.prompt_length
    if spec.method == "endprompt":
        if spec.prompt_source == "tail":
            source[:, T - b:] = (available - b)[:, None] + np.arange(b)[None, :]
        elif spec.prompt_source == "template":
            source[:, T - b:] = 0  # a placeholder the template overwrites: the unit may end before T
        P, L = spec.physical_length, spec.target_length
        if spec.anchor == "fixed":
            start2 = np.full(n, L - b - spec.anchor_offset, dtype=np.int64)
        else:
            start2 = uniform_draws(keys, P - b, L - b)
        position_ids[:, T - b:] = start2[:, None] + np.arange(b)[None, :]
    input_ids = _gather(flat, starts, prefix, source)
    if spec.method == "endprompt" and spec.prompt_source == "template":
        input_ids[:, T - b:] = np.asarray(spec.prompt_ids, dtype=np.int64)[None, :]

    labels = input_ids.copy()
    if spec.method == "endprompt" and spec.mask == "segment1":
        labels[:, : T - b] = IGNORE_INDEX
    elif spec.method == "endprompt" and spec.mask == "segment2":
        labels[:, T - b:] = IGNORE_INDEX
    return {"input_ids": np.ascontiguousarray(input_ids), "position_ids": position_ids, "labels": labels}


def _gather(flat: np.ndarray, starts: np.ndarray, prefix: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Tokens at `source` (indices into prefix + document, one row per unit)."""
    k = len(prefix)
    tokens = flat[starts[:, None] + np.maximum(source - k, 0)]
    return np.where(source < k, prefix[np.minimum(source, k - 1)], tokens) if k else tokens


def pose_layout(keys: np.ndarray, available: np.ndarray, P: int, L: int, chunks: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """PoSE as its official code draws it (dwzhu-pku/PoSE, src/train_pose.py, `train_preprocess_function_pose`).

    A sample's P slots are cut into chunks at st_1 < ... < st_{k-1} (st_0 = 0). Chunk i reads its tokens from the
    document at a content skip v_i and takes position ids shifted by a position skip u_i:

        tokens    S[v_i + st_i : v_i + st_{i+1}]     S = prefix + document, truncated to 5 P tokens
        positions st_i + u_i .. st_{i+1} - 1 + u_i

    with v_0 = u_0 = 0, and for i = 1..k-1, drawn in this order (the official order for two chunks):
        st_i  two chunks (the official code): [1, (P+1)//2];
              more chunks (the official code has none; the paper's sequential rule, Sec. 3.2, with lengths
              drawn as its appendix coverage code does for three chunks): [st_{i-1} + 1, P - (k - i)]
        v_i   [v_{i-1}, len(S) - P]
        u_i   [u_{i-1}, L - P]
    so chunks never overlap in content or positions and the last position is at most L - 1.
    Returns ([n, P] indices into S, [n, P] position ids).
    """
    n = len(keys)
    cuts = np.zeros((n, chunks - 1), dtype=np.int64)
    content = np.zeros((n, chunks), dtype=np.int64)
    skips = np.zeros((n, chunks), dtype=np.int64)
    content_room = np.minimum(available, POSE_CONTENT_WINDOW * P) - P
    previous_cut = np.zeros(n, dtype=np.int64)
    for i in range(1, chunks):
        stream = 3 * (i - 1)
        high = (P + 1) // 2 if chunks == 2 else P - (chunks - i)
        cuts[:, i - 1] = previous_cut = uniform_draws(keys, previous_cut + 1, high, stream)
        content[:, i] = uniform_draws(keys, content[:, i - 1], content_room, stream + 1)
        skips[:, i] = uniform_draws(keys, skips[:, i - 1], L - P, stream + 2)
    chunk_of = (np.arange(P)[None, None, :] >= cuts[:, :, None]).sum(axis=1)  # [n, P]
    slots = np.arange(P)[None, :]
    return (slots + np.take_along_axis(content, chunk_of, axis=1),
            slots + np.take_along_axis(skips, chunk_of, axis=1))
