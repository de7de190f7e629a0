"""Tokenising only what a sample reads: token ids of a document's head and tail from windows of its text, equal to
the whole text's tokens there, with the Rust tokenizer core shipped to the tokenizer actors."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np

from endprompt_ray.method.anchoring import cut_to_span


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


# A window of a long text ends or starts at a space between a letter or digit and a non-space: byte-level regex,
# Metaspace and whitespace pre-tokenisers all split there, in the window as in the whole text, so the window's
# tokens are the text's own. GUARD_TOKENS of margin cover what a normaliser may still change next to the cut
# (e.g. a prepended "▁"); a text with no such boundary near the cut, or a window short of tokens after it has grown,
# is tokenised whole.
CUT = re.compile(r"[^\W_] (?=\S)")  # matched at the character before the space
CHARS_PER_TOKEN = 6  # the first window's size; prose averages 3-5 characters per token
GUARD_TOKENS = 8
SEARCH_CHARS = 2048  # how far before (head) or after (tail) the ideal cut a boundary is looked for


def encode_spans(tokenizer, texts: list[str], head: int, tail: int) -> tuple[list[np.ndarray], Counter]:
    """Token ids (int32) of each text cut to its first `head` and last `tail` tokens (`cut_to_span`), tokenising
    only windows of long texts; counts of texts `truncated` and characters tokenised (`tokenised_chars`)."""
    out: list = [None] * len(texts)
    counts: Counter = Counter(text_chars=sum(len(t) for t in texts))
    todo, chars_per_token = list(range(len(texts))), CHARS_PER_TOKEN
    while todo:
        cuts, whole = {}, []
        for i in todo:
            text, head_chars = texts[i], chars_per_token * (head + GUARD_TOKENS)
            tail_chars = chars_per_token * (tail + GUARD_TOKENS) if tail else 0
            ends = _window_ends(text, head_chars, tail_chars) if head_chars + tail_chars < len(text) else None
            if ends is None:
                whole.append(i)
            else:
                cuts[i] = ends
        heads = encode(tokenizer, [texts[i][:cuts[i][0]] for i in cuts])
        tails = encode(tokenizer, [texts[i][cuts[i][1]:] for i in cuts]) if tail else [[]] * len(cuts)
        counts["tokenised_chars"] += sum(c[0] + (len(texts[i]) - c[1] if tail else 0) for i, c in cuts.items())
        todo = []
        for (i, _), h, t in zip(cuts.items(), heads, tails):
            if len(h) < head + GUARD_TOKENS or len(t) < (tail + GUARD_TOKENS if tail else 0):
                todo.append(i)  # too few tokens in the window: a larger one next round
                continue
            out[i] = np.asarray(h[:head] + (t[-tail:] if tail else []), dtype=np.int32)
            counts["truncated"] += 1
        for i, ids in zip(whole, encode(tokenizer, [texts[i] for i in whole])):
            out[i] = cut_to_span(np.asarray(ids, dtype=np.int32), head, tail)
            counts["truncated"] += len(ids) > head + tail
            counts["tokenised_chars"] += len(texts[i])
        chars_per_token *= 4
    return out, counts


def _window_ends(text: str, head_chars: int, tail_chars: int) -> tuple[int, int] | None:
    """(end of the head window, start of the tail window) at cut boundaries, or None to tokenise the text whole."""
    head_end = _cut_near(text, head_chars, backwards=True)
    if head_end is None or not tail_chars:
        return None if head_end is None else (head_end, len(text))
    tail_start = _cut_near(text, len(text) - tail_chars, backwards=False)
    return (head_end, tail_start) if tail_start is not None and tail_start > head_end else None


def _cut_near(text: str, at: int, backwards: bool) -> int | None:
    """The nearest space at or before (after) `at`, within SEARCH_CHARS, that is a cut boundary (see CUT)."""
    lo, hi = max(1, at - SEARCH_CHARS), min(len(text) - 1, at + SEARCH_CHARS)
    i = at if backwards else at - 1
    while True:  # str.find/rfind run in C; a regex scan with lookbehind over the range costs more than the encode
        i = text.rfind(" ", lo, i) if backwards else text.find(" ", i + 1, hi)
        if i < 0:
            return None
        if CUT.match(text, i - 1):
            return i


def text_keys(texts: list[str]) -> np.ndarray:
    """A uint64 identity per document: its random draws and its place in a shuffle follow from it."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                                    "little") for t in texts], dtype=np.uint64)
