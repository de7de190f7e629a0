"""A synthetic demo corpus, generated here so the default job needs no downloads.

Documents are seeded procedural prose: short "reports" about invented stations, with numbers that recur inside a
document, so a tiny model has something learnable and long documents have content worth remembering.
"""

from __future__ import annotations


import numpy as np

PLACES = ["north ridge", "lower harbor", "east quarry", "glass valley", "old mill", "river fork", "salt flats",
           "cedar pass", "iron bay", "south dunes", "copper hill", "lake point"]
_THINGS = ["wind", "rain", "traffic", "power load", "water level", "soil moisture", "bird count", "noise",
           "temperature", "pressure", "visibility", "tide"]
_VERBS = ["rose", "fell", "held steady", "doubled", "dropped sharply", "climbed slowly", "peaked", "recovered"]
_LINKS = ["Meanwhile", "Later that day", "By evening", "In the morning", "Shortly after", "Overnight"]


def sentence(rng: np.random.Generator, station: str, code: int) -> str:
    link = _LINKS[rng.integers(len(_LINKS))]
    thing = _THINGS[rng.integers(len(_THINGS))]
    verb = _VERBS[rng.integers(len(_VERBS))]
    value = int(rng.integers(1, 1000))
    if rng.random() < 0.15:
        return f"Station {station} repeated its code {code} for the log."
    return f"{link}, the {thing} at {station} {verb} to {value} units."


def make_document(rng: np.random.Generator, n_sentences: int) -> str:
    station = PLACES[rng.integers(len(PLACES))]
    code = int(rng.integers(10000, 99999))
    head = f"Report for station {station}, code {code}."
    body = " ".join(sentence(rng, station, code) for _ in range(n_sentences))
    return f"{head} {body} End of report for {station}, code {code}."


def generate_documents(num_documents: int, seed: int = 0, mean_sentences: int = 40) -> list[str]:
    """Documents with log-normal lengths: most are long enough for one training sample, a few are short."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.lognormal(np.log(mean_sentences), 0.6, size=num_documents).astype(int))
    return [make_document(rng, int(n)) for n in lengths]

