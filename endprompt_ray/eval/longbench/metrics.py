"""LongBench metrics (metrics.py / eval.py of THUDM/LongBench), written out without jieba, rouge or fuzzywuzzy.

Rouge-L follows the `rouge` package LongBench calls (summary-level LCS over sentences split at ".", word sets).
code_sim uses difflib's ratio, which is what fuzzywuzzy computes when python-Levenshtein is not installed.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from typing import Sequence

from endprompt_ray.eval.longbench.config import FIRST_LINE_ONLY, METRIC

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles (a/an/the), collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_) -> float:
    return _f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def count_score(prediction: str, ground_truth, **_) -> float:
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == str(ground_truth) for n in numbers) / len(numbers)


def retrieval_score(prediction: str, ground_truth: str, **_) -> float:
    target = re.findall(r"Paragraph (\d+)", ground_truth)[0]
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == target for n in numbers) / len(numbers)


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str] = (), **_) -> float:
    matches = [c for c in all_classes if c in prediction]
    for term in matches:  # removing while iterating skips elements; kept as the reference behaves
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
    # The reference's similarity fallback sits behind `if list != 0`, which is always true, so it never runs.
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _fuzz_ratio(a: str, b: str) -> int:
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_sim_score(prediction: str, ground_truth: str, **_) -> float:
    """Similarity of the first prediction line that is not a comment or a code fence."""
    line = next((x for x in prediction.lstrip("\n").split("\n") if "`" not in x and "#" not in x and "//" not in x), "")
    return _fuzz_ratio(line, ground_truth) / 100


def _sentences(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.split(".") if len(part) > 0]


def _lcs_words(x: list[str], y: list[str]) -> set[str]:
    """Words of one longest common subsequence, backtracked with the `rouge` package's tie-breaking."""
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(table[i - 1][j], table[i][j - 1])
    out, i, j = set(), len(x), len(y)
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out


def rouge_score(prediction: str, ground_truth: str, **_) -> float:
    """Rouge-L F (summary level, unique words); 0 when either side has no sentence."""
    hyp, ref = _sentences(prediction), _sentences(ground_truth)
    if not hyp or not ref:
        return 0.0
    hyp_words = [s.split(" ") for s in hyp]
    ref_words = [s.split(" ") for s in ref]
    union: set[str] = set()
    for r in ref_words:
        for h in hyp_words:
            union |= _lcs_words(r, h)
    m = len({w for s in ref_words for w in s})
    n = len({w for s in hyp_words for w in s})
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


METRICS = {"qa_f1": qa_f1_score, "rouge": rouge_score, "classification": classification_score,
           "retrieval": retrieval_score, "count": count_score, "code_sim": code_sim_score}


def score_dataset(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
                  all_classes: Sequence[Sequence[str] | None]) -> tuple[float, list[float]]:
    """Dataset score (mean of per-sample best-over-answers, x100, 2 decimals) and the per-sample scores."""
    metric = METRICS[METRIC[dataset]]
    per_sample = []
    for prediction, truths, classes in zip(predictions, answers, all_classes):
        if dataset in FIRST_LINE_ONLY:
            prediction = prediction.lstrip("\n").split("\n")[0]
        per_sample.append(max([metric(prediction, t, all_classes=classes or ()) for t in truths], default=0.0))
    return round(100 * sum(per_sample) / len(per_sample), 2), per_sample
