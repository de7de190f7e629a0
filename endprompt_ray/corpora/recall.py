"""A corpus in which retrieval is a general skill: facts stated once and recalled later under varied surface forms,
and spans of random words and numbers that recur, inside haystacks of plain English sentences.

An episode is a haystack with one to three facts stated at random depths, then each fact recalled:

    fact      an entity ("Amber Falcon"), an attribute ("badge number") and a value: a number of 2 to 6 digits, a
              word or an identifier such as "K7-Q2"; facts of one episode often share the attribute, so a recall
              has to match the entity, not just the attribute
    stated    in one of several forms: "The badge number of Amber Falcon is 4821." / "Amber Falcon's badge number
              is 4821." / "For Amber Falcon, the badge number was 4821." / "Note: badge number for Amber Falcon = 4821."
    recalled  in another form or the same, ending where the value starts: "Q: What is the badge number of Amber
              Falcon? A:" / "Recall the badge number of Amber Falcon: it is" / "Amber Falcon's badge number is"
    span      a run of random words and numbers; later its first items recur and the rest is copied

What is learned is copying from context, whatever the template: no evaluation format of the project occurs here
(passkey, the reports probe, the held-out locker and ticket probes, RULER's needles; tests/test_separation.py checks
their distinctive strings against this corpus), so every one of them is held out for a model pretrained on it.
Haystack lengths are drawn uniformly up to a window (the distances evaluated) for 30% of the episodes and
log-uniformly for the rest (short copies teach the skill fast).
"""

from __future__ import annotations

import numpy as np

from endprompt_ray.corpora.words import LISTS, entity_name, fill, pick

_HAYSTACK = (  # sentence shapes; {a} an adjective, {n} a noun, {v} a verb (base form)
    "A {a} {n} stood near the {n}.",
    "The {n} and the {n} were both {a}.",
    "We walked past a {a} {n} on the way.",
    "Some people say the {n} is rather {a}.",
    "There was a {n} on top of the {a} {n}.",
    "Nobody wanted to {v} the {n} again.",
    "After a while the {a} {n} began to {v}.",
    "Her {n} looked {a} in the light.",
    "He left the {n} by the {a} {n}.",
    "It was too {a} to {v} that day.",
)
_NUMBER_ATTRIBUTES = ("badge number", "room number", "account code", "extension", "order number", "seat number",
                      "gate number", "lot number", "pin", "zip code", "shelf number", "phone code")
_WORD_ATTRIBUTES = ("favorite word", "password", "nickname", "secret word", "lucky charm", "code name")
_ID_ATTRIBUTES = ("serial", "call sign", "batch label", "plate", "tag")
_STATED = ("The {a} of {e} is {v}.", "{e}'s {a} is {v}.", "For {e}, the {a} was {v}.", "{e} has the {a} {v}.",
           "Note: {a} for {e} = {v}.", "We learned that the {a} of {e} is {v}.")
_RECALLED = ("The {a} of {e} is", "{e}'s {a} is", "Q: What is the {a} of {e}? A:", "Recall the {a} of {e}: it is",
             "So the {a} for {e} was", "{e} has the {a}")
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_PARAGRAPH = 0.15  # chance that a haystack sentence starts a new paragraph


def _value(rng: np.random.Generator, attribute: str) -> str:
    if attribute in _WORD_ATTRIBUTES:
        return pick(rng, LISTS["n"])
    if attribute in _ID_ATTRIBUTES:
        return "-".join(f"{_LETTERS[rng.integers(len(_LETTERS))]}{rng.integers(10)}" for _ in range(2))
    digits = int(rng.integers(2, 7))
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def _attribute(rng: np.random.Generator) -> str:
    kind = rng.random()
    pool = _NUMBER_ATTRIBUTES if kind < 0.6 else _WORD_ATTRIBUTES if kind < 0.8 else _ID_ATTRIBUTES
    return pool[rng.integers(len(pool))]


def _facts(rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(entity, attribute, value) triples, distinct entities; half the time they share one attribute."""
    count = int(rng.integers(1, 4))
    shared = _attribute(rng) if rng.random() < 0.5 else None
    names: list[str] = []
    while len(names) < count:
        name = entity_name(rng)
        if name not in names:
            names.append(name)
    facts = []
    for name in names:
        attribute = shared or _attribute(rng)
        facts.append((name, attribute, _value(rng, attribute)))
    return facts


def _span(rng: np.random.Generator) -> tuple[str, str, str]:
    """(the span, its cue, the rest): a cue of 2-3 items and a rest of 3-11 items of words and numbers."""
    items = [pick(rng, LISTS["n"]) if rng.random() < 0.6 else str(int(rng.integers(10, 10_000)))
             for _ in range(int(rng.integers(6, 14)))]
    cut = int(rng.integers(2, 4))
    return " ".join(items) + ".", " ".join(items[:cut]), " ".join(items[cut:]) + "."


def _template(rng: np.random.Generator, pool: tuple[str, ...], fact: tuple[str, str, str]) -> str:
    entity, attribute, value = fact
    return pool[rng.integers(len(pool))].format(e=entity, a=attribute, v=value)


def recall_episode(rng: np.random.Generator, window_words: int) -> str:
    """One episode: a haystack holding facts (or a span) at random depths, then their recall with the answers."""
    if rng.random() < 0.3:
        words = int(rng.integers(0, window_words + 1))
    else:
        words = int(np.expm1(rng.uniform(0, np.log1p(window_words))))
    sentences = [fill(rng, _HAYSTACK[rng.integers(len(_HAYSTACK))]) for _ in range(max(1, words // 7))]
    if rng.random() < 0.35:  # a recurring span
        span, cue, rest = _span(rng)
        sentences.insert(int(rng.integers(len(sentences) + 1)), span)
        recalls = [f"Again: {cue} {rest}"]
    else:
        facts = _facts(rng)
        for fact in facts:
            sentences.insert(int(rng.integers(len(sentences) + 1)), _template(rng, _STATED, fact))
        order = rng.permutation(len(facts))
        recalls = [f"{_template(rng, _RECALLED, facts[i])} {facts[i][2]}." for i in order]
    body = "".join(("\n\n" if i and rng.random() < _PARAGRAPH else " " if i else "") + s
                   for i, s in enumerate(sentences))
    return body + "\n" + " ".join(recalls)


def recall_episodes(rng: np.random.Generator, spec):
    window_words = spec.model.max_position_embeddings // 3  # a word and its share of the templates: ~3 tokens
    while True:
        yield recall_episode(rng, window_words)


# ---- the extension corpus --------------------------------------------------------------------------------------------

EXTENSION_WINDOW = 2048  # tokens the haystacks reach: the CPU default's target length
EXTENSION_MIN_TOKENS = 300  # past the default 256-token physical window, so every document has a far tail


def long_recall_documents(tokenizer, count: int, seed: int, window: int = EXTENSION_WINDOW,
                          min_tokens: int = EXTENSION_MIN_TOKENS) -> list[str]:
    """`count` recall episodes whose haystacks reach `window` tokens, each of at least `min_tokens`: the recall
    recipe's generator at the target length, so a fact stated near a document's head is recalled in its tail.
    EndPrompt's tail prompt (the document's last tokens, placed near the target length) then holds a recall of
    something in the head segment, and full-length or PoSE training sees the whole distance. Seeded."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < count:
        batch = [recall_episode(rng, window // 3) for _ in range(256)]
        lengths = [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
        out += [text for text, n in zip(batch, lengths) if n >= min_tokens][:count - len(out)]
    return out
