"""Haystack material: the repeated noise paragraph and a user-supplied essay corpus.

The reference builds its essay haystack from Paul Graham's essays, which cannot be shipped here; `load_corpus` reads
any English prose the user points at instead (a file or a folder), so essay-task scores are only comparable with
published RULER numbers when that corpus is the same.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.io import iter_jsonl, read_json
from endprompt_ray.eval.ruler.fitting import TokenCounter, prefix_sums
from endprompt_ray.eval.ruler.tasks import NOISE

NOISE_SENTENCES: tuple[str, ...] = tuple(re.split(r"(?<=\.) ", NOISE))
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?$")
CORPUS_SUFFIXES = (".txt", ".md", ".json", ".jsonl")


def noise_lines(n: int) -> list[str]:
    """n noise sentences as lines of the noise paragraph; a partial last line lets a budget be met per sentence."""
    full, rest = divmod(n, len(NOISE_SENTENCES))
    lines = [NOISE] * full
    if rest:
        lines.append(" ".join(NOISE_SENTENCES[:rest]))
    return lines


def noise_estimator(counter: TokenCounter):
    """Tokens of noise_lines(n) joined by newlines, up to a constant, in O(1) per call."""
    if "noise" not in counter.memo:
        k = len(NOISE_SENTENCES)
        partial = counter.pieces(["\n" + " ".join(NOISE_SENTENCES[:r]) for r in range(1, k + 1)])
        counter.memo["noise"] = np.concatenate([[0], partial])
    partial = counter.memo["noise"]
    k = len(NOISE_SENTENCES)
    return lambda n: (n // k) * int(partial[k]) + int(partial[n % k])


def noise_bounds(estimate, budget: int, inserted: int) -> tuple[int, int]:
    """(n_min, n_max) noise sentences around `inserted` lines: a full noise line per inserted one at least, more
    than `budget` tokens hold at most."""
    k = len(NOISE_SENTENCES)
    line_tokens = max(1, estimate(k))
    return k * inserted, k * (budget // line_tokens + inserted + 2)


@dataclass
class Corpus:
    path: str
    words: list[str]
    sentence_ends: list[int]  # word index just past each sentence

    def sentences(self, n_words: int) -> list[str]:
        """Sentences of the first n_words words; the last one may be cut, as when the reference splits a prefix."""
        out, start = [], 0
        for end in self.sentence_ends[:bisect_right(self.sentence_ends, n_words)]:
            out.append(" ".join(self.words[start:end]))
            start = end
        if start < n_words:
            out.append(" ".join(self.words[start:n_words]))
        return out

    def word_prefix_sums(self, counter: TokenCounter) -> np.ndarray:
        key = ("corpus", self.path)
        if key not in counter.memo:
            counter.memo[key] = prefix_sums(counter.pieces([" " + w for w in self.words]))
        return counter.memo[key]


def _read_text(path: Path) -> str:
    if path.suffix == ".jsonl":
        texts = []
        for lineno, row in iter_jsonl(path):
            try:
                texts.append(row["text"])
            except (KeyError, TypeError) as err:
                raise EvalInputError(f"{path}:{lineno}: expected a JSON object with a 'text' field ({err})") from err
        return "\n".join(texts)
    if path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            return data["text"]
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return "\n".join(data)
        raise EvalInputError(f"{path}: expected {{\"text\": \"...\"}} (the layout of RULER's PaulGrahamEssays.json) "
                             "or a list of strings")
    return path.read_text(encoding="utf-8", errors="replace")


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Corpus:
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in CORPUS_SUFFIXES) if p.is_dir() else [p]
    text = " ".join(_read_text(f) for f in files)
    words = re.sub(r"\s+", " ", text).strip().split(" ") if text.strip() else []
    if not words:
        raise EvalInputError(f"essay corpus {path} holds no text; point essay_path at English prose "
                             f"(a file or a folder of {', '.join(CORPUS_SUFFIXES)} files)")
    ends = [i + 1 for i, w in enumerate(words) if _SENTENCE_END.search(w)]
    return Corpus(path, words, ends)


def load_corpus(path: str | Path | None) -> Corpus:
    if path is None:
        raise EvalInputError("essay haystack tasks need a text corpus: set essay_path (--essay) to a file or folder of "
                             "English prose, e.g. Paul Graham's essays as RULER uses (not shipped here), or drop the "
                             "essay tasks (niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery)")
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise EvalInputError(f"essay corpus {p} does not exist; fix essay_path (--essay)")
    return _load(str(p), p.stat().st_mtime)
