"""Retrieval probes a small model can pass, fitted to exact token budgets like RULER.

`passkey` follows Landmark Attention's passkey test (epfml/landmark-attention, `run_test.py`), word for word:

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you ...
    <filler before the needle>
    The pass key is 12345. Remember it. 12345 is the pass key.
    <filler after the needle>
    What is the pass key? The pass key is

The filler repeats "The grass is green. ... There and back again." and is cut by words (the reference cuts by
characters); the needle goes after round(depth * n) of its n words. Keys are 5-digit integers.

`report_code` is the same question in the demo corpus's own format (`endprompt_ray/demo_corpus.py`): a report that
states "Report for station X, code N." at its head, body sentences from the corpus's generator (never the ones that
repeat the code, so the head is the only place to find it) and "End of report for X, code" at the end. Depth is 0.

Budgets: prompt tokens (with special tokens, as the model gets them) + tokens to generate <= length, fitted with
`ruler.fitting` (prefix sums, two or three real tokenisations per prompt). A sample scores 1 when the first integer in
the greedy continuation equals the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from endprompt_ray.corpora.passkey import FILLER_WORDS, passkey_prompt
from endprompt_ray.corpora.reports import PLACES, sentence  # the corpus's own generator: the probe must read like training text
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import greedy_generate, load_model_and_tokenizer, resolve_tokenizer
from endprompt_ray.eval.passkey_report import (PasskeyResult, aggregate, format_passkey, log_passkey_to_mlflow,
                                               write_outputs)
from endprompt_ray.eval.ruler.fitting import Draft, TokenCounter, TooShort, fit, prefix_sums, sized_pool
from endprompt_ray.eval.ruler.samples import sample_seed
from endprompt_ray.rope.scaling import reset_dynamic_rope

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
PROBES = ("passkey", "report_code")
MIN_FILL = 0.99  # fitting stops searching once a prompt reaches this share of the length
_INTEGER = re.compile(r"\d+")

__all__ = ["DEFAULT_DEPTHS", "PROBES", "PasskeyResult", "PasskeySettings", "ProbeSample", "build_samples",
           "first_integer", "format_passkey", "log_passkey_to_mlflow", "run_passkey", "score_continuations"]


@dataclass
class PasskeySettings:
    lengths: list[int]
    depths: list[float] | None = None  # passkey needle depths in [0, 1]; None: DEFAULT_DEPTHS (report_code: [0])
    num_samples: int = 5  # per length and depth
    batch_size: int = 1
    seed: int = 42
    probe: str = "passkey"  # or "report_code"
    tokens_to_generate: int = 10
    progress: bool = True

    def resolved_depths(self) -> list[float]:
        if self.probe == "report_code":
            return [0.0]
        return sorted({float(d) for d in (DEFAULT_DEPTHS if self.depths is None else self.depths)})

    def validate(self) -> None:
        if self.probe not in PROBES:
            raise EvalInputError(f"unknown probe {self.probe!r}; choose one of {', '.join(PROBES)}")
        if not self.lengths or any(not isinstance(n, int) or n <= 0 for n in self.lengths):
            raise EvalInputError(f"lengths must be positive integers (tokens), got {self.lengths!r}")
        for name in ("num_samples", "batch_size", "tokens_to_generate"):
            if int(getattr(self, name)) < 1:
                raise EvalInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.probe == "report_code" and self.depths not in (None, [0], [0.0]):
            raise EvalInputError("report_code states its code at the document head (depth 0); leave depths unset")
        depths = self.depths if self.depths is not None else DEFAULT_DEPTHS
        if not depths or any(not 0.0 <= float(d) <= 1.0 for d in depths):
            raise EvalInputError(f"depths are fractions of the filler before the needle, each in [0, 1]; "
                                 f"got {self.depths!r} (e.g. 0,0.25,0.5,0.75,1)")


@dataclass
class ProbeSample:
    probe: str
    length: int
    depth: float  # the requested depth (fraction of the filler before the needle)
    index: int
    key: int
    prompt: str
    prompt_tokens: int
    tokens_to_generate: int

    @property
    def fill(self) -> float:
        return (self.prompt_tokens + self.tokens_to_generate) / self.length


def filler_estimator(counter: TokenCounter):
    """Tokens of filler_words(n) joined by spaces, up to a constant, in O(1) per call."""
    if "passkey_filler" not in counter.memo:
        counter.memo["passkey_filler"] = prefix_sums(counter.pieces([" " + w for w in FILLER_WORDS]))
    cum, period = counter.memo["passkey_filler"], len(FILLER_WORDS)
    return lambda n: (n // period) * int(cum[period]) + int(cum[n % period])


def passkey_draft(rng: np.random.Generator, depth: float, counter: TokenCounter, budget: int) -> tuple[Draft, int]:
    key = int(rng.integers(10_000, 100_000))
    # Every filler word costs at least one token, so `budget` words always overfill: a safe upper bound.
    return Draft(render=lambda n: (passkey_prompt(key, depth, n), {}), estimate=filler_estimator(counter),
                 n_min=0, n_max=max(0, budget)), key


def report_code_draft(rng: np.random.Generator, depth: float, counter: TokenCounter,
                      budget: int) -> tuple[Draft, int]:
    """A demo-corpus report whose code is stated only at its head; whole body sentences fill the budget."""
    station = PLACES[rng.integers(len(PLACES))]  # drawn in the order make_document draws them
    code = int(rng.integers(10000, 99999))
    head, question = f"Report for station {station}, code {code}.", f"End of report for {station}, code"

    def body(start: int, stop: int) -> list[str]:
        out: list[str] = []
        while len(out) < stop - start:
            text = sentence(rng, station, code)
            if str(code) not in text:  # "Station X repeated its code N" would give the answer away
                out.append(" " + text)  # a unit carries its separator, so its token count is exact
        return out

    sentences, counts = sized_pool(body, counter, budget, cache=False)
    cum = prefix_sums(counts)
    return Draft(render=lambda n: (head + "".join(sentences[:n]) + " " + question, {}),
                 estimate=lambda n: int(cum[n]), n_min=0, n_max=len(sentences)), code


DRAFTS = {"passkey": passkey_draft, "report_code": report_code_draft}


def build_samples(tokenizer, settings: PasskeySettings) -> list[ProbeSample]:
    settings.validate()
    return seeded_samples(tokenizer, settings, DRAFTS[settings.probe])


def seeded_samples(tokenizer, settings, draft) -> list[ProbeSample]:
    """Seeded samples for every length x depth x index of validated `settings` (a probe's settings: lengths,
    resolved_depths(), num_samples, seed, probe, tokens_to_generate), each prompt drawn by
    `draft(rng, depth, counter, budget) -> (Draft, key)` and fitted to its length; a sample is the same whatever
    else runs."""
    counter = TokenCounter(tokenizer)
    ttg, samples = settings.tokens_to_generate, []
    for length in sorted(set(settings.lengths)):
        budget, target = length - ttg, math.ceil(MIN_FILL * length) - ttg
        for depth in settings.resolved_depths():
            for index in range(settings.num_samples):
                rng = np.random.default_rng(sample_seed(settings.seed, f"{settings.probe}@{depth}", length, index))
                try:
                    drawn, key = draft(rng, depth, counter, budget)
                    fitted = fit(drawn, counter, budget, target)
                except TooShort as err:
                    raise EvalInputError(f"{settings.probe} does not fit in length {length} with this tokenizer: "
                                         f"it needs at least {err.needed + ttg} tokens ({ttg} of them generated); "
                                         "drop or raise that length") from err
                samples.append(ProbeSample(settings.probe, length, depth, index, key, fitted.prompt,
                                           fitted.prompt_tokens, ttg))
    return samples


def first_integer(text: str) -> int | None:
    match = _INTEGER.search(text)
    return int(match.group()) if match else None


def score_continuations(samples: list[ProbeSample], continuations: list[str]) -> list[dict]:
    """One record per sample: score 1 when the first integer of the continuation is the key, else 0."""
    if len(samples) != len(continuations):
        raise EvalInputError(f"{len(continuations)} continuations for {len(samples)} samples; give one per sample")
    records = []
    for s, raw in zip(samples, continuations):
        answer = first_integer(raw)
        records.append({"probe": s.probe, "length": s.length, "depth": s.depth, "index": s.index, "key": s.key,
                        "pred": answer, "raw_pred": raw, "score": int(answer == s.key),
                        "prompt_tokens": s.prompt_tokens, "tokens_to_generate": s.tokens_to_generate,
                        "fill": round(s.fill, 4), "prompt_tail": s.prompt[-200:]})
    return records


def run_passkey(model, tokenizer, settings: PasskeySettings, output_dir: str | Path) -> PasskeyResult:
    """Evaluate `model` (a loaded causal LM or a model directory) on one probe; writes files under output_dir."""
    samples = build_samples(resolve_tokenizer(model, tokenizer), settings)
    model, tokenizer = load_model_and_tokenizer(model, tokenizer)
    continuations = [""] * len(samples)
    # length by length, shortest first, from the original frequencies: a dynamic-NTK rotary module keeps the
    # frequencies of the longest call it has seen, so a length generated after a longer one would be scored at them
    for length in sorted({s.length for s in samples}):
        chosen = [i for i, s in enumerate(samples) if s.length == length]
        reset_dynamic_rope(model)
        texts = greedy_generate(model, tokenizer, [samples[i].prompt for i in chosen], settings.tokens_to_generate,
                                settings.batch_size, desc=f"{settings.probe} @{length}", progress=settings.progress)
        for i, text in zip(chosen, texts):
            continuations[i] = text
    records = score_continuations(samples, continuations)
    return write_outputs(aggregate(records, settings.probe), records, output_dir, dataclasses.asdict(settings))
