"""Where sample builders get their inputs: the tokenizer's counter, the target length, seeds and user data files."""

from __future__ import annotations

from dataclasses import dataclass

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.ruler.fitting import TokenCounter
from endprompt_ray.eval.ruler.haystack import Corpus, load_corpus
from endprompt_ray.eval.ruler.qa_data import FORMATS, QAData, load_qa

SOURCE_OPTIONS = {"essay": "essay_path (--essay)", "squad": "squad_path (--squad)",
                  "hotpotqa": "hotpotqa_path (--hotpotqa)"}


@dataclass(frozen=True)
class Sources:
    essay_path: str | None = None
    squad_path: str | None = None
    hotpotqa_path: str | None = None

    def path(self, requirement: str) -> str | None:
        return {"essay": self.essay_path, "squad": self.squad_path, "hotpotqa": self.hotpotqa_path}[requirement]

    def missing(self, requirement: str | None) -> str | None:
        """Why a task needing `requirement` cannot run, or None when its data was given."""
        if requirement is None or self.path(requirement) is not None:
            return None
        what = "an essay corpus (RULER uses Paul Graham's essays, not shipped here)" if requirement == "essay" \
            else FORMATS[requirement]
        return f"needs {what}; set {SOURCE_OPTIONS[requirement]}"

    def corpus(self) -> Corpus:
        return load_corpus(self.essay_path)

    def qa(self, dataset: str) -> QAData:
        path = self.path(dataset)
        if path is None:
            raise EvalInputError(f"qa task on {dataset} {self.missing(dataset)}")
        return load_qa(dataset, path)


@dataclass(frozen=True)
class BuildContext:
    counter: TokenCounter
    length: int  # target total tokens: prompt + tokens to generate
    budget: int  # prompt tokens allowed
    seed: int  # this sample's seed
    run_seed: int  # the run's seed (shared material such as the vt worked example)
    index: int  # sample number within its task and length
    sources: Sources
