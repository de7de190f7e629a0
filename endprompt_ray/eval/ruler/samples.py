"""Build the samples of one task at one length: seeded, each fitted to the exact token budget."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.ruler.cwe import cwe_draft
from endprompt_ray.eval.ruler.fitting import Draft, Fitted, TokenCounter, TooShort, fit
from endprompt_ray.eval.ruler.fwe import fwe_draft
from endprompt_ray.eval.ruler.niah import niah_draft
from endprompt_ray.eval.ruler.qa import qa_draft
from endprompt_ray.eval.ruler.sources import BuildContext, Sources
from endprompt_ray.eval.ruler.tasks import TaskSpec, get_task
from endprompt_ray.eval.ruler.vt import vt_draft

BUILDERS: dict[str, Callable] = {"niah": niah_draft, "variable_tracking": vt_draft,
                                 "common_words_extraction": cwe_draft, "freq_words_extraction": fwe_draft,
                                 "qa": qa_draft}
MIN_FILL = 0.95
# Draws tried per sample before it is dropped. The reference redraws until one fits (no bound); a bound keeps a task
# that can never fit from looping. cwe at 4096 with the tiny byte-level tokenizer fits roughly 1 draw in 20.
MAX_DRAWS = 200
HOPELESS_AFTER = 20  # failed draws before `_hopeless` may give up on a sample early
log = logging.getLogger(__name__)


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
    draw: int = 0  # which random draw of this sample fit (0: the first; see build_samples)

    @property
    def fill(self) -> float:
        return (self.prompt_tokens + self.tokens_to_generate) / self.length


def sample_seed(seed: int, task: str, length: int, index: int, draw: int = 0) -> int:
    """Independent of which other tasks/lengths run, so a sample is the same wherever it is generated; `draw` > 0
    gives the seed of a redraw."""
    key = f"{seed}:{task}:{length}:{index}" + (f":{draw}" if draw else "")
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)


def min_length(err: TooShort, tokens_to_generate: int) -> int:
    return err.needed if err.what == "length" else err.needed + tokens_to_generate


@dataclass
class TaskSamples:
    """The samples of one task at one length, with what it took to draw them."""

    task: str
    length: int
    samples: list[Sample]
    requested: int
    redraws: int = 0  # draws beyond each sample's first, summed over the samples (dropped ones included)
    dropped: dict[int, int] = field(default_factory=dict)  # sample index with no fitting draw -> draws tried

    @property
    def redrawn(self) -> int:
        """Samples whose first draw did not fit."""
        return sum(s.draw > 0 for s in self.samples) + len(self.dropped)

    def stats(self) -> dict:
        return {"requested": self.requested, "built": len(self.samples), "redrawn": self.redrawn,
                "redraws": self.redraws, "dropped": sorted(self.dropped)}

    def note(self) -> str | None:
        """One line for the report, or None when every sample fit at its first draw."""
        if not self.redrawn:
            return None
        text = (f"{self.task} @ {self.length}: {self.redrawn} of {self.requested} samples did not fit at their first "
                f"random draw ({self.redraws} redraws)")
        if self.dropped:
            text += (f"; {len(self.dropped)} found no fitting draw and were dropped (sample: draws tried "
                     + ", ".join(f"{i}: {n}" for i, n in sorted(self.dropped.items()))
                     + f"), so the score covers {len(self.samples)} samples")
        return text


def _hopeless(needed: list[int], budget: int) -> bool:
    """After enough failed draws, stop when the budget lies further below the smallest draw than the draws spread:
    the draws do not vary enough for any to fit (fixed parts such as a template or vt's example are too long)."""
    return len(needed) >= HOPELESS_AFTER and min(needed) - budget > max(needed) - min(needed)


def _draw_sample(spec: TaskSpec, ctx: BuildContext, fitter, target: int, needed: list[int]) -> Sample | None:
    """One draw of one sample fitted to ctx.budget; None (and the tokens it needed appended to `needed`) if even
    its smallest haystack exceeds the budget."""
    ttg = spec.tokens_to_generate
    try:
        draft = BUILDERS[spec.family](spec, ctx)
        fitted = fitter(draft, ctx.counter, ctx.budget, target)
    except TooShort as err:
        if err.what == "length":  # no draw can change the length a task needs
            raise
        needed.append(err.needed)
        return None
    if draft.exhausted and fitted.n == draft.n_max and fitted.prompt_tokens < target:
        fill = (fitted.prompt_tokens + ttg) / ctx.length
        raise EvalInputError(f"{draft.exhausted} is too small for {spec.name} at length {ctx.length}: all of it fills "
                             f"only {fill:.0%} of the length; supply more text or evaluate shorter lengths")
    return Sample(spec.name, ctx.length, ctx.index, fitted.prompt, list(fitted.extras["answers"]), fitted.prompt_tokens,
                  ttg, dict(fitted.extras.get("depths", {})))


def build_samples(task: str, length: int, num_samples: int, counter: TokenCounter, sources: Sources,
                  seed: int = 42, min_fill: float = MIN_FILL,
                  fitter: Callable[[Draft, TokenCounter, int, int], Fitted] = fit,
                  max_draws: int = MAX_DRAWS) -> TaskSamples:
    """Build and fit `num_samples` samples. A draw whose fixed parts exceed the budget (e.g. cwe's words drawn long)
    is replaced by a fresh draw, up to `max_draws` per sample; a sample with no fitting draw is dropped and counted.
    Raises TooShort when the task cannot fit in `length` (the first sample found no fitting draw, or the length
    itself is below what the task needs), EvalInputError when its data is missing or too small."""
    if max_draws < 1:
        raise EvalInputError(f"max_draws must be at least 1, got {max_draws}")
    spec = get_task(task)
    budget = length - spec.tokens_to_generate
    if budget <= 0:
        raise TooShort(spec.tokens_to_generate + 1, length, what="length")
    target = math.ceil(min_fill * length) - spec.tokens_to_generate
    result = TaskSamples(task, length, [], num_samples)
    for index in range(num_samples):
        needed: list[int] = []  # per failed draw: prompt tokens with its smallest haystack
        for draw in range(max_draws):
            ctx = BuildContext(counter, length, budget, sample_seed(seed, task, length, index, draw), seed, index,
                               sources)
            sample = _draw_sample(spec, ctx, fitter, target, needed)
            if sample is not None or _hopeless(needed, budget):
                break
        if sample is not None:
            sample.draw = draw
            result.samples.append(sample)
            result.redraws += draw
        elif not result.samples:  # no draw of the first sample fits: the task does not fit this length
            raise TooShort(min(needed), budget, draws=len(needed))
        else:
            result.dropped[index] = len(needed)
            result.redraws += len(needed) - 1
    note = result.note()
    if note:
        log.warning("RULER %s", note)
    return result


def generate_samples(task: str, length: int, num_samples: int, counter: TokenCounter, sources: Sources,
                     seed: int = 42, min_fill: float = MIN_FILL,
                     fitter: Callable[[Draft, TokenCounter, int, int], Fitted] = fit,
                     max_draws: int = MAX_DRAWS) -> list[Sample]:
    """The samples of `build_samples` (redraws and dropped samples are logged as a warning)."""
    return build_samples(task, length, num_samples, counter, sources, seed, min_fill, fitter, max_draws).samples
