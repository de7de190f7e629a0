"""Landmark Attention's passkey prompt (epfml/landmark-attention, `run_test.py`): its text, filler and needle."""

from __future__ import annotations

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."  # RULER's noise
PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                "I will quiz you about the important information there.")
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"
FILLER_WORDS: tuple[str, ...] = tuple(NOISE.split(" "))  # RULER's noise paragraph is Landmark's filler


def filler_words(n: int) -> list[str]:
    """The first n words of the endlessly repeated filler."""
    full, rest = divmod(n, len(FILLER_WORDS))
    return list(FILLER_WORDS) * full + list(FILLER_WORDS[:rest])


def passkey_prompt(key: int, depth: float, n_words: int) -> str:
    """Landmark's five lines: the task, filler, the needle after round(depth * n_words) words, filler, the question."""
    words = filler_words(n_words)
    cut = round(depth * n_words)
    return "\n".join([PASSKEY_TASK, " ".join(words[:cut]), PASSKEY_NEEDLE.format(key=key), " ".join(words[cut:]),
                      PASSKEY_QUESTION])


def passkey_documents(tokenizer, count: int, length: int, needle_within: int, seed: int = 0) -> list[str]:
    """`count` passkey prompts, each followed by its answer, of at most `length` tokens of `tokenizer`, with the whole
    needle inside the first `needle_within` tokens: the evaluation's own format, laid out so that an EndPrompt sample
    (the first P - b tokens, then the document's last b tokens, the question and its answer) retrieves across the
    position jump. Fine-tuning on it is in-distribution for the passkey probe by construction: a control that shows
    what the trainer learns when the data teaches the task, not evidence that a context was extended.
    The filler is the same in every document, so its length and the needle's latest place are fitted once (by
    bisection, on a 5-digit key) and every document is checked after."""
    import numpy as np

    def tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def document(key: int, cut: int, words: int) -> str:
        return f"{passkey_prompt(key, cut / words if words else 0.0, words)} {key}."

    def head(doc: str, key: int) -> str:  # the document up to the needle's end
        needle = PASSKEY_NEEDLE.format(key=key)
        return doc[:doc.index(needle) + len(needle)]

    def largest(fits, high: int) -> int:  # the largest n in [0, high] with fits(n), fits being monotone; else -1
        low = -1
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        return low

    probe = 99_999
    words = largest(lambda n: tokens([document(probe, 0, n)])[0] <= length, length)
    latest = largest(lambda n: tokens([head(document(probe, n, words), probe)])[0] <= needle_within, max(words, 0))
    if words <= 0 or latest < 0:
        raise ValueError(f"passkey documents of {length} tokens with the needle inside {needle_within} tokens do not "
                         "fit this tokenizer's prompt; raise the length or needle_within")
    rng = np.random.default_rng(seed)
    draws = [(int(rng.integers(10_000, 100_000)), int(rng.integers(0, latest + 1))) for _ in range(count)]
    docs = [document(key, cut, words) for key, cut in draws]
    over = [i for i, (n, h) in enumerate(zip(tokens(docs), tokens([head(d, k) for d, (k, _) in zip(docs, draws)])))
            if n > length or h > needle_within]
    if over:  # a tokenizer that merges digits spells some keys in fewer or more tokens than the probe's
        raise ValueError(f"passkey document {over[0]} does not fit {length} tokens with its needle inside "
                         f"{needle_within} ({len(over)} of {count}); this tokenizer's keys vary in length: leave a "
                         "few tokens of margin in both")
    return docs
