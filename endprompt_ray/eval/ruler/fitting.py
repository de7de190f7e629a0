"""Fit a prompt to an exact token budget without re-tokenising the whole prompt for every candidate size.

A task describes one sample as a `Draft`: `render(n)` builds the prompt with `n` haystack units, and `estimate(n)`
predicts its token count up to a constant from per-unit counts (prefix sums), each unit tokenised once. `fit`
calibrates the constant with one real tokenisation, searches the estimate, then verifies the chosen prompt with one
real tokenisation and corrects if tokenisation across unit boundaries made it differ.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from endprompt_ray.eval.errors import EvalInputError

_ANCHOR = "x"  # pieces are measured after this prefix so their leading space/newline tokenises as in running text
_SLOT = "\x00"  # stands in for the context while the rest of a template is formatted once
_ESTIMATE_ROUNDS = 4  # estimate-guided guesses in `fit` before real bisection takes over
_POOL_CHUNK = 64  # units `sized_pool` materialises at a time


def size_rng(seed: int, n: int) -> random.Random:
    """The RNG for a haystack of n units (placement, shuffles)."""
    return random.Random(seed * 1_000_003 + n)  # depends on n, not on the order in which `fit` probes sizes


def split_template(template: str, **fields) -> tuple[str, str]:
    """(head, tail) of `template` around its {context}, with the other fields filled in."""
    head, tail = template.format(context=_SLOT, **fields).split(_SLOT)
    return head, tail


class TokenCounter:
    """Token counts for one tokenizer: whole prompts (with special tokens, as the model gets them) and pieces."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokenisations = 0  # whole-prompt tokenisations, reported by the benchmark
        self._pieces: dict[str, int] = {}
        self._anchor = self._lengths([_ANCHOR])[0]
        self.memo: dict = {}  # per-tokenizer derived data (e.g. corpus prefix sums, the vt example)

    def _lengths(self, texts: list[str]) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly: no per-text Python conversion of offsets/masks
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return [len(e.ids) for e in encode(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def prompt(self, text: str) -> int:
        self.tokenisations += 1
        return len(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    def pieces(self, pieces: Sequence[str], cache: bool = True) -> np.ndarray:
        """Tokens each piece adds when it follows other text (a piece carries its own leading separator)."""
        if not cache:
            return np.array(self._lengths([_ANCHOR + p for p in pieces]), dtype=np.int64) - self._anchor
        missing = list({p for p in pieces if p not in self._pieces})
        for start in range(0, len(missing), 8192):
            chunk = missing[start:start + 8192]
            for piece, n in zip(chunk, self._lengths([_ANCHOR + p for p in chunk])):
                self._pieces[piece] = n - self._anchor
        return np.fromiter((self._pieces[p] for p in pieces), dtype=np.int64, count=len(pieces))


def prefix_sums(counts: np.ndarray) -> np.ndarray:
    """cum[n] = tokens of the first n units."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


@dataclass
class Draft:
    """One sample with an open haystack size n in [n_min, n_max]; render(n) -> (prompt, extras)."""

    render: Callable[[int], tuple[str, dict]]
    estimate: Callable[[int], float]  # monotone in n; only differences matter
    n_min: int
    n_max: int
    exhausted: str | None = None  # names a finite source (corpus, QA file); too small if even n_max underfills


@dataclass
class Fitted:
    prompt: str
    extras: dict
    n: int
    prompt_tokens: int


class TooShort(EvalInputError):
    """The task's fixed parts alone exceed the budget at this length (for every random draw tried, `draws`)."""

    def __init__(self, needed: int, have: int, what: str = "prompt", draws: int = 1):
        self.needed, self.have, self.what = needed, have, what  # what: "prompt" tokens or total "length"
        self.draws = draws
        tried = f" (the smallest of {draws} random draws)" if draws > 1 else ""
        super().__init__(f"needs a {what} of at least {needed} tokens{tried}, has {have}")


def _largest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest n in [lo, hi] with ok(n), given ok(lo) and ok monotone (true then false)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit(draft: Draft, counter: TokenCounter, budget: int, target: int | None = None) -> Fitted:
    """The largest haystack whose prompt has at most `budget` tokens; stops early once it reaches `target` tokens."""
    target = budget if target is None else min(target, budget)
    measured: dict[int, tuple[str, dict, int]] = {}

    def measure(n: int) -> int:
        text, extras = draft.render(n)
        measured[n] = (text, extras, counter.prompt(text))
        return measured[n][2]

    if measure(draft.n_min) > budget:
        raise TooShort(measured[draft.n_min][2], budget)
    best, fail = draft.n_min, draft.n_max + 1
    n = draft.n_min
    for _ in range(_ESTIMATE_ROUNDS):
        offset = measured[n][2] - draft.estimate(n)
        n = _largest(lambda m: draft.estimate(m) + offset <= budget, best, fail - 1)
        if n in measured:
            break
        if measure(n) <= budget:
            best = n
            if measured[n][2] >= target:
                break
        else:
            fail = n
    # Tokenisation across unit boundaries disagreed with the estimate: settle the rest by real bisection.
    while measured[best][2] < target and fail - best > 1:
        mid = (best + fail) // 2
        if measure(mid) <= budget:
            best = mid
        else:
            fail = mid
    text, extras, tokens = measured[best]
    return Fitted(text, extras, best, tokens)


def sized_pool(make: Callable[[int, int], list[str]], counter: TokenCounter, budget: int, limit: int | None = None,
               cache: bool = True) -> tuple[list[str], np.ndarray]:
    """Materialise haystack units chunk by chunk until they hold more than `budget` tokens (or `limit` units)."""
    units: list[str] = []
    counts: list[np.ndarray] = []
    total = 0
    while total <= budget and (limit is None or len(units) < limit):
        stop = len(units) + _POOL_CHUNK if limit is None else min(limit, len(units) + _POOL_CHUNK)
        new = make(len(units), stop)
        if not new:
            break
        units.extend(new)
        counts.append(counter.pieces(new, cache=cache))
        total += int(counts[-1].sum())
    return units, (np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64))
