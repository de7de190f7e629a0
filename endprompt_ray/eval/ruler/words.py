"""Random needle keys/values and word pools, drawn from the `wonderwords` package's lists as the reference does."""

from __future__ import annotations

import random
import string
import uuid
from functools import lru_cache

from endprompt_ray.corpora.words import word_list


@lru_cache(maxsize=None)
def nouns() -> tuple[str, ...]:
    return tuple(sorted(set(word_list("nounlist.txt"))))


@lru_cache(maxsize=None)
def adjectives() -> tuple[str, ...]:
    return tuple(sorted(set(word_list("adjectivelist.txt"))))


@lru_cache(maxsize=None)
def common_word_pool() -> tuple[str, ...]:
    """Nouns + adjectives + verbs, de-duplicated and sorted: the word pool of common-words extraction."""
    return tuple(sorted(set(word_list("nounlist.txt") + word_list("adjectivelist.txt") + word_list("verblist.txt"))))


def random_number(rng: random.Random, num_digits: int = 7) -> str:
    return str(rng.randint(10 ** (num_digits - 1), 10 ** num_digits - 1))


def random_word(rng: random.Random) -> str:
    """An "adjective-noun" key; drawn by index so the ~6M combinations are never materialised."""
    adjs, ns = adjectives(), nouns()
    return f"{adjs[rng.randrange(len(adjs))]}-{ns[rng.randrange(len(ns))]}"


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


GENERATORS = {"numbers": random_number, "words": random_word, "uuids": random_uuid}


def random_value(kind: str, rng: random.Random) -> str:
    return GENERATORS[kind](rng)


def random_letters(rng: random.Random, k: int, alphabet: str = string.ascii_uppercase) -> str:
    return "".join(rng.choices(alphabet, k=k))


def unique_letters(rng: random.Random, count: int, k: int, alphabet: str = string.ascii_uppercase,
                   exclude: frozenset[str] = frozenset()) -> list[str]:
    """`count` distinct random strings of `k` letters, in draw order."""
    out: list[str] = []
    seen = set(exclude)
    while len(out) < count:
        word = random_letters(rng, k, alphabet)
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out
