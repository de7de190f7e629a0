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
    The filler is the same for every document, so its length and the needle's latest start are fitted once."""
    import numpy as np

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def document(key: int, cut: int, words: int) -> str:
        return f"{passkey_prompt(key, cut / words if words else 0.0, words)} {key}."

    widest = 99_999  # every key has 5 digits; digits may tokenise apart, so the widest-spelled key bounds them all
    words = 0
    while tokens(document(widest, 0, words + 64)) <= length:  # coarse, then word by word
        words += 64
    while tokens(document(widest, 0, words + 1)) <= length:
        words += 1
    head = PASSKEY_TASK + "\n" + PASSKEY_NEEDLE.format(key=widest)
    latest = -1  # the latest filler cut whose needle still ends inside `needle_within` tokens
    while latest < words and tokens(head.replace("\n", "\n" + " ".join(filler_words(latest + 1)) + "\n", 1)
                                    ) <= needle_within:
        latest += 1
    if words == 0 or latest < 0:
        raise ValueError(f"passkey documents of {length} tokens with the needle inside {needle_within} tokens do not "
                         "fit this tokenizer's prompt; raise the length or needle_within")
    rng = np.random.default_rng(seed)
    return [document(int(rng.integers(10_000, 100_000)), int(rng.integers(0, latest + 1)), words)
            for _ in range(count)]
