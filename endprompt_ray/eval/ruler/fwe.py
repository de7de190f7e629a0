"""Frequent words extraction (fwe): coded words drawn with Zipf (zeta) frequencies; name the three most frequent."""

from __future__ import annotations

import random
import string
from typing import TYPE_CHECKING, Callable

import numpy as np

from endprompt_ray.eval.ruler.fitting import Draft, TooShort, size_rng
from endprompt_ray.eval.ruler.tasks import FWE_ANSWER_PREFIX, FWE_TEMPLATE, FWE_VOCAB_DIVISOR, FWE_WORD_LEN, TaskSpec
from endprompt_ray.eval.ruler.words import unique_letters

if TYPE_CHECKING:
    from endprompt_ray.eval.ruler.sources import BuildContext


def zeta(s: float, terms: int = 1000) -> float:
    """Riemann zeta for s > 1 (Euler-Maclaurin tail), so that no SciPy dependency is needed."""
    k = np.arange(1, terms, dtype=np.float64)
    n = float(terms)
    return float(np.sum(k ** -s) + n ** (1 - s) / (s - 1) + 0.5 * n ** -s + s * n ** (-s - 1) / 12)


def zipf_counts(vocab_size: int, alpha: float) -> Callable[[int], np.ndarray]:
    """word_counts(., vocab_size, alpha) with k^-alpha and zeta(alpha) computed once, for repeated calls."""
    weights = np.arange(1, vocab_size + 1, dtype=np.float64) ** -alpha
    z = zeta(alpha)
    return lambda num_words: (num_words * weights / z).astype(np.int64)


def word_counts(num_words: int, vocab_size: int, alpha: float) -> np.ndarray:
    """Occurrences of the rank-k word: floor(num_words * k^-alpha / zeta(alpha))."""
    return zipf_counts(vocab_size, alpha)(num_words)


def min_words(vocab_size: int, alpha: float) -> int:
    """Fewest words for which ranks 2-5 have strictly falling counts, so the top three coded words are unambiguous."""
    counts = zipf_counts(min(vocab_size, 5), alpha)
    n = 1
    while True:
        c = counts(n)
        if c[1] > c[2] > c[3] > c[4]:
            return n
        n += 1


def fwe_vocab_size(length: int, tokens_to_generate: int) -> int:
    """Coded words in the vocabulary: the prompt budget (length - tokens to generate) // 50, as the reference."""
    return (length - tokens_to_generate) // FWE_VOCAB_DIVISOR


def fwe_draft(spec: TaskSpec, ctx: "BuildContext") -> Draft:
    alpha = spec.params["alpha"]
    ttg = ctx.length - ctx.budget
    vocab_size = fwe_vocab_size(ctx.length, ttg)
    if vocab_size < 5:  # "..." plus the three answers plus one below them, so that the top three are unambiguous
        raise TooShort(5 * FWE_VOCAB_DIVISOR + ttg, ctx.length, what="length")
    rng = random.Random(ctx.seed)
    vocab = sorted(unique_letters(rng, vocab_size, FWE_WORD_LEN, string.ascii_lowercase))
    rng.shuffle(vocab)
    vocab[0] = "..."  # the most frequent "word" is noise; the answer is ranks 2-4
    tokens = ctx.counter.pieces([" " + w for w in vocab], cache=False)
    weights_sum = float(np.sum(np.arange(1, vocab_size + 1, dtype=np.float64) ** -alpha) / zeta(alpha))
    n_min = min_words(vocab_size, alpha)
    counts = zipf_counts(vocab_size, alpha)

    def render(n: int) -> tuple[str, dict]:
        words = [w for w, c in zip(vocab, counts(n)) for _ in range(c)]
        size_rng(ctx.seed, n).shuffle(words)
        return FWE_TEMPLATE.format(context=" ".join(words)) + FWE_ANSWER_PREFIX, {"answers": vocab[1:4]}

    return Draft(render, estimate=lambda n: int(counts(n) @ tokens), n_min=n_min,
                 n_max=int((ctx.budget + vocab_size) / weights_sum) + n_min)
