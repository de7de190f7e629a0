"""Plain English words from the `wonderwords` lists (a dependency), for generated haystacks, names and values."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

LISTS = {"a": "adjectivelist.txt", "n": "nounlist.txt", "v": "verblist.txt"}  # adjective, noun, verb


@lru_cache(maxsize=None)
def word_list(list_name: str) -> tuple[str, ...]:
    """Every entry of one wonderwords list, in file order."""
    text = resources.files("wonderwords.assets").joinpath(list_name).read_text()
    return tuple(line.rstrip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=None)
def plain_words(list_name: str) -> tuple[str, ...]:
    """The lowercase alphabetic words of one wonderwords list (no spaces, hyphens or digits), sorted."""
    return tuple(sorted({w for w in word_list(list_name) if w.isalpha() and w.islower()}))


def pick(rng: np.random.Generator, list_name: str) -> str:
    pool = plain_words(list_name)
    return pool[rng.integers(len(pool))]


def fill(rng: np.random.Generator, shape: str) -> str:
    """`shape` with each {a}, {n} or {v} replaced by a random adjective, noun or verb."""
    parts = shape.split("{")
    out = [parts[0]]
    for part in parts[1:]:
        out.append(pick(rng, LISTS[part[0]]) + part[2:])
    return "".join(out)


def entity_name(rng: np.random.Generator) -> str:
    """Two capitalised words, read as a name ("Amber Falcon")."""
    return f"{pick(rng, LISTS['a']).capitalize()} {pick(rng, LISTS['n']).capitalize()}"
