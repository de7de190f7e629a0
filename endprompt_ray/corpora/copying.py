"""Copy documents: runs of random words and numbers in which one span recurs, the cleanest form of copying from context.

A small model pretrained on varied retrieval text alone learns the statistics of its templates but not to copy:
measured on the 2 x 128 toy at 256 tokens, answer-token accuracy stays at ~33% from 1500 to 6000 steps whatever
the loss or the share of repeated spans, because a copying circuit (a previous-token head feeding an induction
head) has to form before copying pays, and at 256 tokens that plateau outlasts the budget. On 32-token sequences it
breaks within ~2500 steps; once formed, the circuit carries over to 256 tokens in a few hundred steps. So the toy
base's recall recipe starts with a warm-up on these documents at a short window, then mixes them into its main
stage (`models.toy.ToyBaseSpec`).

A document is `window` tokens plus a margin: random units, a span of `window / 8` to `(window - 1) / 2` tokens, more
random units (a gap of random length, possibly none), the same span again, and random units after it. A unit is a
word, one of the tokenizer's own word-start tokens (" after", " mist") that encodes back to exactly itself, or a
number (" 4821", a space and digits, which the toy tokenizers split one by one), because the evaluations' answers
are numbers. Units start with a space, so the tokens of a document are its units' tokens one for one and the repeat
is exact in tokens, not only in characters.
"""

from __future__ import annotations

import numpy as np

from endprompt_ray.errors import ConfigError

MARGIN = 8  # tokens past the window, so a BOS-prefixed first window still ends inside the document
NUMBER_SHARE = 0.25  # chance that a unit is a number
NUMBER_DIGITS = (2, 5)  # a number's digit count, inclusive


def word_pieces(tokenizer) -> list[str]:
    """The vocabulary's alphabetic word-start tokens, as text, that the tokenizer encodes back to one token."""
    pieces = []
    for token in sorted(tokenizer.get_vocab()):
        text = tokenizer.convert_tokens_to_string([token])
        if text.startswith(" ") and text[1:].isalpha() and len(tokenizer(text, add_special_tokens=False)
                                                               ["input_ids"]) == 1:
            pieces.append(text)
    if len(pieces) < 64:
        raise ConfigError(f"copy documents need at least 64 word-start tokens in the tokenizer's vocabulary; it has "
                          f"{len(pieces)}. Train the tokenizer on English text (as models.toy.build_toy_tokenizer "
                          "does) or give the recipe copy_share=0 and no copy warm-up.")
    return pieces


def _units(rng: np.random.Generator, words: list[str], tokens: int) -> list[str]:
    """Random units of exactly `tokens` tokens in all (a number is 1 + its digits; a word is 1)."""
    out = []
    while tokens > 0:
        digits = int(rng.integers(NUMBER_DIGITS[0], NUMBER_DIGITS[1] + 1))
        if rng.random() < NUMBER_SHARE and digits + 1 <= tokens:
            out.append(" " + "".join(str(d) for d in rng.integers(10, size=digits)))
            tokens -= digits + 1
        else:
            out.append(words[int(rng.integers(len(words)))])
            tokens -= 1
    return out


def copy_document(rng: np.random.Generator, words: list[str], window: int) -> tuple[str, tuple[int, int, int]]:
    """One document and its layout (span start, span length, repeat start) in tokens."""
    span = int(rng.integers(max(2, window // 8), (window - 1) // 2 + 1))
    room = window - 1 - 2 * span  # the repeat ends before the window's last token (room for BOS)
    prefix = int(rng.integers(0, room + 1))
    gap = int(rng.integers(0, room - prefix + 1))
    spanned = _units(rng, words, span)
    parts = (_units(rng, words, prefix) + spanned + _units(rng, words, gap) + spanned
             + _units(rng, words, window + MARGIN - prefix - 2 * span - gap))
    return "".join(parts), (prefix, span, prefix + span + gap)


def copy_documents(tokenizer, count: int, window: int, seed: int) -> list[str]:
    """`count` copy documents of `window` + MARGIN tokens each, seeded."""
    if window < 16:
        raise ConfigError(f"copy documents need a window of at least 16 tokens, got {window}")
    rng, words = np.random.default_rng(seed), word_pieces(tokenizer)
    return [copy_document(rng, words, window)[0] for _ in range(count)]
