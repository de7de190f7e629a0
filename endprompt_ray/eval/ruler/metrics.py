"""RULER scoring, as scripts/eval/evaluate.py and scripts/eval/synthetic/constants.py define it."""

from __future__ import annotations

import re
from typing import Callable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """Strip, turn control characters (newlines, tabs, ...) into newlines, strip again."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def _found(reference: str, prediction: str) -> float:
    return 1.0 if reference.lower() in prediction.lower() else 0.0


def sample_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of the references found in the prediction (case-insensitive substring)."""
    return sum(_found(r, prediction) for r in references) / len(references)


def sample_part(prediction: str, references: Sequence[str]) -> float:
    """1 if any reference is found in the prediction."""
    return max(_found(r, prediction) for r in references)


SAMPLE_METRICS = {"string_match_all": sample_all, "string_match_part": sample_part}


def task_score(per_sample: Sequence[float]) -> float:
    """Mean of the per-sample scores, x100, rounded to 2 decimals."""
    return round(sum(per_sample) / len(per_sample) * 100, 2)


def _averaged(sample_metric: Callable[[str, Sequence[str]], float], preds: Sequence[str],
              refs: Sequence[Sequence[str]]) -> float:
    return task_score([sample_metric(p, r) for p, r in zip(preds, refs)])


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references found, x100, rounded to 2 decimals."""
    return _averaged(sample_all, preds, refs)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of 1-if-any-reference-found, x100, rounded to 2 decimals (the QA tasks)."""
    return _averaged(sample_part, preds, refs)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}
