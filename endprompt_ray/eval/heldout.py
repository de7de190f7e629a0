"""Held-out retrieval probes: formats no generated training corpus of the project uses, scored like the passkey.

Two plain-English formats, each a fact stated once inside a haystack of varied English sentences (words from the
`wonderwords` lists, several sentence shapes, paragraph breaks; no digits, so the fact holds the only number):

- `locker` (key-value): "The locker of Amber Falcon holds the number 48213." ... "Which number does the locker of
  Amber Falcon hold? The locker of Amber Falcon holds the number"
- `ticket_qa` (question-answer): "Read the story and answer the question at the end." ... "Glass Harbor paid 48213
  coins for a ticket to the quiet orchard." ... "Question: How many coins did Glass Harbor pay for the ticket?
  Answer: Glass Harbor paid" (the answer restates its subject, so a model that answers "Answer: 4" and stops, as
  SmolLM2-135M does after a bare "Answer:" for 7 of 20 keys whose first digit it got right, is not scored on style)

The needle goes after round(depth * n) of the n haystack sentences; prompts are fitted to exact token budgets with
`ruler.fitting` (as eval/passkey.py does) and a sample scores 1 when the first integer of the greedy continuation is
the key. `PROBE_SIGNATURES` names every probe's distinctive strings (held-out, in-distribution and RULER's), and
`IN_DISTRIBUTION_PROBES` names the probes the toy base's pretraining corpus is made of; tests/test_separation.py
checks both against every generated training corpus.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from endprompt_ray.corpora.words import LISTS, entity_name, fill, pick
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import greedy_generate, load_model_and_tokenizer, resolve_tokenizer
from endprompt_ray.eval.passkey import DEFAULT_DEPTHS, ProbeSample, score_continuations, seeded_samples
from endprompt_ray.eval.passkey_report import PasskeyResult, aggregate, write_outputs
from endprompt_ray.eval.ruler.fitting import Draft, TokenCounter, prefix_sums, sized_pool
from endprompt_ray.rope.scaling import reset_dynamic_rope

HELDOUT_PROBES = ("locker", "ticket_qa")
# The toy base's pretraining corpus (corpora/toy.py) is made of these probes' own formats: scores on them measure
# fitting a trained format, not retrieval in general.
IN_DISTRIBUTION_PROBES = ("passkey", "report_code")
# Strings that identify a probe's format (task line, needle, question); none of a held-out probe's may occur in a
# generated training corpus, and each in-distribution probe's do.
PROBE_SIGNATURES: dict[str, tuple[str, ...]] = {
    "locker": ("The locker of", "holds the number", "Which number does the locker"),
    "ticket_qa": ("Read the story and answer the question", "coins for a ticket to", "How many coins did"),
    "passkey": ("The pass key is", "What is the pass key?", "There is an important info hidden"),
    "report_code": ("Report for station", "End of report for"),
    "niah": ("special magic", "mentioned in the provided text"),  # RULER niah_* (single, multikey, ...)
    "variable_tracking": ("chain(s) of variable assignment", "Find all variables that are assigned"),
}

_SHAPES = (  # haystack sentence shapes; {a} an adjective, {n} a noun, {v} a verb (base form)
    "The {a} {n} rested beside the {n}.",
    "Nobody expected the {n} to look so {a}.",
    "Every {n} near the {a} {n} seemed {a} that morning.",
    "They chose to {v} the {a} {n} before the evening.",
    "A {a} {n} and a {a} {n} waited by the road.",
    "Somewhere past the {n}, a {n} began to {v}.",
    "It is said that the {n} once tried to {v} a {n}.",
    "Under the {a} sky the {n} was quiet and {a}.",
)
_PARAGRAPH = 0.12  # chance that a sentence starts a new paragraph


def haystack_sentence(rng: np.random.Generator) -> str:
    return fill(rng, _SHAPES[rng.integers(len(_SHAPES))])


@dataclass(frozen=True)
class Statement:
    """One probe's fixed parts around the haystack."""

    intro: str  # before the haystack ("" for none)
    needle: str
    question: str  # after the haystack; ends where the answer starts


def locker(rng: np.random.Generator, key: int) -> Statement:
    name = entity_name(rng)
    return Statement("", f"The locker of {name} holds the number {key}.",
                     f"Which number does the locker of {name} hold? The locker of {name} holds the number")


def ticket_qa(rng: np.random.Generator, key: int) -> Statement:
    name, place = entity_name(rng), f"{pick(rng, LISTS['a'])} {pick(rng, LISTS['n'])}"
    return Statement("Read the story and answer the question at the end.",
                     f"{name} paid {key} coins for a ticket to the {place}.",
                     f"Question: How many coins did {name} pay for the ticket?\nAnswer: {name} paid")


STATEMENTS = {"locker": locker, "ticket_qa": ticket_qa}


@dataclass
class HeldoutSettings:
    lengths: list[int]
    probe: str = "locker"  # one of HELDOUT_PROBES
    depths: list[float] | None = None  # needle depths in [0, 1]; None: passkey's DEFAULT_DEPTHS
    num_samples: int = 5  # per length and depth
    batch_size: int = 1
    seed: int = 42
    tokens_to_generate: int = 10
    progress: bool = True

    def resolved_depths(self) -> list[float]:
        return sorted({float(d) for d in (DEFAULT_DEPTHS if self.depths is None else self.depths)})

    def validate(self) -> None:
        if self.probe not in HELDOUT_PROBES:
            raise EvalInputError(f"unknown held-out probe {self.probe!r}; choose one of {', '.join(HELDOUT_PROBES)}")
        if not self.lengths or any(not isinstance(n, int) or n <= 0 for n in self.lengths):
            raise EvalInputError(f"lengths must be positive integers (tokens), got {self.lengths!r}")
        for name in ("num_samples", "batch_size", "tokens_to_generate"):
            if int(getattr(self, name)) < 1:
                raise EvalInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        depths = self.resolved_depths()
        if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
            raise EvalInputError(f"depths are fractions of the haystack before the needle, each in [0, 1]; "
                                 f"got {self.depths!r} (e.g. 0,0.25,0.5,0.75,1)")


def heldout_draft(probe: str, rng: np.random.Generator, depth: float, counter: TokenCounter,
                  budget: int) -> tuple[Draft, int]:
    key = int(rng.integers(10_000, 100_000))
    statement = STATEMENTS[probe](rng, key)

    def body(start: int, stop: int) -> list[str]:  # a unit carries its separator, so its token count is exact
        return [("\n\n" if rng.random() < _PARAGRAPH else " ") + haystack_sentence(rng) for _ in range(start, stop)]

    sentences, counts = sized_pool(body, counter, budget, cache=False)
    cum = prefix_sums(counts)

    def render(n: int) -> tuple[str, dict]:
        cut = round(depth * n)
        head = f"{statement.intro}\n" if statement.intro else ""
        text = (head + "".join(sentences[:cut]).lstrip() + (" " if cut else "") + statement.needle
                + "".join(sentences[cut:n]) + "\n" + statement.question)
        return text, {}

    return Draft(render=render, estimate=lambda n: int(cum[n]), n_min=0, n_max=len(sentences)), key


def build_heldout_samples(tokenizer, settings: HeldoutSettings) -> list[ProbeSample]:
    settings.validate()
    return seeded_samples(tokenizer, settings, partial(heldout_draft, settings.probe))


def generate_by_length(model, tokenizer, samples: list[ProbeSample], batch_size: int, progress: bool) -> list[str]:
    """Greedy continuations, length by length from the shortest, each from the original RoPE frequencies: a
    dynamic-NTK rotary module keeps the frequencies of the longest call it has seen."""
    continuations = [""] * len(samples)
    for length in sorted({s.length for s in samples}):
        chosen = [i for i, s in enumerate(samples) if s.length == length]
        reset_dynamic_rope(model)
        texts = greedy_generate(model, tokenizer, [samples[i].prompt for i in chosen],
                                max(samples[i].tokens_to_generate for i in chosen), batch_size,
                                desc=f"{samples[chosen[0]].probe} @{length}", progress=progress)
        for i, text in zip(chosen, texts):
            continuations[i] = text
    return continuations


def run_heldout(model, tokenizer, settings: HeldoutSettings, output_dir: str | Path) -> PasskeyResult:
    """Evaluate `model` (a loaded causal LM or a model directory) on one held-out probe; writes predictions.jsonl,
    summary.json and a depth x length heatmap under output_dir."""
    samples = build_heldout_samples(resolve_tokenizer(model, tokenizer), settings)
    model, tokenizer = load_model_and_tokenizer(model, tokenizer)
    continuations = generate_by_length(model, tokenizer, samples, settings.batch_size, settings.progress)
    records = score_continuations(samples, continuations)
    return write_outputs(aggregate(records, settings.probe), records, output_dir, dataclasses.asdict(settings))
