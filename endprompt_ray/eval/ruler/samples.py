"""Build the samples of one task at one length: seeded, each fitted to the exact token budget."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable

from ..errors import EvalInputError
from .cwe import cwe_draft
from .fitting import Draft, Fitted, TokenCounter, TooShort, fit
from .fwe import fwe_draft
from .niah import niah_draft
from .qa import qa_draft
from .sources import BuildContext, Sources
from .tasks import get_task
from .vt import vt_draft

BUILDERS: dict[str, Callable] = {"niah": niah_draft, "variable_tracking": vt_draft,
                                 "common_words_extraction": cwe_draft, "freq_words_extraction": fwe_draft,
                                 "qa": qa_draft}
MIN_FILL = 0.95


@dataclass
class Sample:
    task: str
    length: int
    index: int
    prompt: str  # the model's whole input, ending with the answer prefix
    answers: list[str]
    prompt_tokens: int
    tokens_to_generate: int
    depths: dict[str, float] = field(default_factory=dict)  # needle value -> position in the context (percent)

    @property
    def fill(self) -> float:
        return (self.prompt_tokens + self.tokens_to_generate) / self.length


def sample_seed(seed: int, task: str, length: int, index: int) -> int:
    """Independent of which other tasks/lengths run, so a sample is the same wherever it is generated."""
    return int(hashlib.sha256(f"{seed}:{task}:{length}:{index}".encode()).hexdigest()[:12], 16)


def min_length(err: TooShort, tokens_to_generate: int) -> int:
    return err.needed if err.what == "length" else err.needed + tokens_to_generate


def generate_samples(task: str, length: int, num_samples: int, counter: TokenCounter, sources: Sources,
                     seed: int = 42, min_fill: float = MIN_FILL,
                     fitter: Callable[[Draft, TokenCounter, int, int], Fitted] = fit) -> list[Sample]:
    """Raises TooShort when the task cannot fit in `length`, EvalInputError when its data is missing or too small."""
    spec = get_task(task)
    ttg = spec.tokens_to_generate
    budget = length - ttg
    if budget <= 0:
        raise TooShort(ttg + 1, length, what="length")
    target = math.ceil(min_fill * length) - ttg
    out = []
    for index in range(num_samples):
        ctx = BuildContext(counter, length, budget, sample_seed(seed, task, length, index), seed, index, sources)
        draft = BUILDERS[spec.family](spec, ctx)
        fitted = fitter(draft, counter, budget, target)
        if draft.exhausted and fitted.n == draft.n_max and fitted.prompt_tokens < target:
            fill = (fitted.prompt_tokens + ttg) / length
            raise EvalInputError(f"{draft.exhausted} is too small for {task} at length {length}: all of it fills "
                                 f"only {fill:.0%} of the length; supply more text or evaluate shorter lengths")
        out.append(Sample(task, length, index, fitted.prompt, list(fitted.extras["answers"]), fitted.prompt_tokens,
                          ttg, dict(fitted.extras.get("depths", {}))))
    return out
