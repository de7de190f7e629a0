"""The 13 RULER tasks as data: prompt templates, answer prefixes, tokens to generate and per-task parameters.

Everything here restates NVIDIA/RULER at commit c3f5e3b (scripts/synthetic.yaml, scripts/data/synthetic/constants.py
and the generator scripts) so that prompts match the benchmark word for word. The model sees
`template + answer_prefix` (the "base" model template) and continues after the answer prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from endprompt_ray.corpora.passkey import NOISE  # noqa: F401 - RULER's noise; Landmark's passkey filler too
from endprompt_ray.eval.errors import EvalInputError

NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
# Depths (percent) at which needles go into an essay haystack: 40 evenly spaced points, rounded.
DEPTHS = tuple(int(round(100 * i / 39)) for i in range(40))

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above.")
# Spelled "assigned" since the reference's typo fix (commit 4a216f4, May 2025); earlier releases said "assgined".
VT_ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                    "are assigned the value {query}, they are: ")
VT_ICL_TOKENS = 500  # the in-context example's question (without its answer) is built to this many tokens
VT_ICL_VALUE = "12345"  # placeholder value in the in-context example, re-randomised per sample

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that "
    "appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
CWE_SHORT_CONTEXT = 4096  # below this length the reference uses fewer repeats (6/1) and a smaller example (20 words)
CWE_MIN_WORDS = 10  # the reference's word-count search starts here (its `incremental`): the 10 common words alone

FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?")
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_WORD_LEN = 6  # coded words are 6 random lowercase letters
# Vocabulary size = prompt budget // 50 = (length - tokens to generate) // 50: since commit 9f1c84d (June 2025) the
# reference subtracts the tokens to generate before deriving the vocabulary and fitting the prompt.
FWE_VOCAB_DIVISOR = 50

QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
    "\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. "
    "Only give me the answer and do not output any other words.\n\nQuestion: {query}")
QA_ANSWER_PREFIX = " Answer:"
DOCUMENT_PROMPT = "Document {i}:\n{document}"

TOKENS_TO_GENERATE = {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
                      "freq_words_extraction": 50, "qa": 32}
METRIC = {"niah": "string_match_all", "variable_tracking": "string_match_all",
          "common_words_extraction": "string_match_all", "freq_words_extraction": "string_match_all",
          "qa": "string_match_part"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str  # niah | variable_tracking | common_words_extraction | freq_words_extraction | qa
    params: Mapping = field(default_factory=dict)

    @property
    def tokens_to_generate(self) -> int:
        return TOKENS_TO_GENERATE[self.family]

    @property
    def metric(self) -> str:
        return METRIC[self.family]

    @property
    def requires(self) -> str | None:
        """The user-supplied data the task needs: 'essay', 'squad', 'hotpotqa', or None."""
        if self.family == "niah" and self.params["type_haystack"] == "essay":
            return "essay"
        if self.family == "qa":
            return self.params["dataset"]
        return None


def _niah(name: str, haystack: str, key: str, value: str, k: int = 1, v: int = 1, q: int = 1) -> TaskSpec:
    params = {"type_haystack": haystack, "type_needle_k": key, "type_needle_v": value,
              "num_needle_k": k, "num_needle_v": v, "num_needle_q": q}
    return TaskSpec(name, "niah", MappingProxyType(params))


TASKS: Mapping[str, TaskSpec] = MappingProxyType({t.name: t for t in [
    _niah("niah_single_1", "noise", "words", "numbers"),
    _niah("niah_single_2", "essay", "words", "numbers"),
    _niah("niah_single_3", "essay", "words", "uuids"),
    _niah("niah_multikey_1", "essay", "words", "numbers", k=4),
    _niah("niah_multikey_2", "needle", "words", "numbers"),
    _niah("niah_multikey_3", "needle", "uuids", "uuids"),
    _niah("niah_multivalue", "essay", "words", "numbers", v=4),
    _niah("niah_multiquery", "essay", "words", "numbers", q=4),
    TaskSpec("vt", "variable_tracking", MappingProxyType({"type_haystack": "noise", "num_chains": 1, "num_hops": 4})),
    TaskSpec("cwe", "common_words_extraction", MappingProxyType({"freq_cw": 30, "freq_ucw": 3, "num_cw": 10,
                                                                 "num_fewshot": 1})),
    TaskSpec("fwe", "freq_words_extraction", MappingProxyType({"alpha": 2.0})),
    TaskSpec("qa_1", "qa", MappingProxyType({"dataset": "squad"})),
    TaskSpec("qa_2", "qa", MappingProxyType({"dataset": "hotpotqa"})),
]})
ALL_TASKS: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise EvalInputError(f"unknown RULER task {name!r}; choose from: {', '.join(ALL_TASKS)}")
    return TASKS[name]
