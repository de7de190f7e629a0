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

