"""The QA tasks' data (qa_1: SQuAD v2 dev, qa_2: HotpotQA dev-distractor): questions, answers and paragraphs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.io import read_json

FORMATS = {"squad": "SQuAD v2 dev JSON (data[].paragraphs[].context/qas[])",
           "hotpotqa": "HotpotQA dev-distractor JSON (a list of {question, answer, context: [[title, sentences]]})"}


@dataclass(frozen=True)
class Question:
    query: str
    outputs: tuple[str, ...]
    context: tuple[int, ...]  # gold document ids
    more_context: tuple[int, ...] = ()  # same-article paragraphs, preferred as distractors (SQuAD)


@dataclass(frozen=True)
class QAData:
    path: str
    questions: tuple[Question, ...]
    docs: tuple[str, ...]


def _read_squad(data) -> tuple[list[Question], list[str]]:
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    ids = {c: i for i, c in enumerate(docs)}
    questions = []
    for d in data["data"]:
        article = [ids[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            gold = ids[p["context"]]
            for qa in p["qas"]:
                if not qa.get("is_impossible", False):  # SQuAD v2 has unanswerable questions; they are left out
                    questions.append(Question(qa["question"], tuple(a["text"] for a in qa["answers"]), (gold,),
                                              tuple(i for i in article if i != gold)))
    return questions, docs


def _read_hotpotqa(data) -> tuple[list[Question], list[str]]:
    def doc(title, sentences):
        return f"{title}\n{''.join(sentences)}"

    docs = sorted({doc(t, s) for d in data for t, s in d["context"]})
    ids = {c: i for i, c in enumerate(docs)}
    questions = [Question(d["question"], (d["answer"],), tuple(ids[doc(t, s)] for t, s in d["context"]))
                 for d in data]
    return questions, docs


@lru_cache(maxsize=4)
def _load(dataset: str, path: str, mtime: float) -> QAData:
    data = read_json(path, expected=FORMATS[dataset])
    try:
        questions, docs = (_read_squad if dataset == "squad" else _read_hotpotqa)(data)
    except (KeyError, TypeError, ValueError) as err:
        raise EvalInputError(f"{path}: not {FORMATS[dataset]}: missing or malformed field {err}") from err
    if not questions:
        raise EvalInputError(f"{path}: no answerable questions found; expected {FORMATS[dataset]}")
    return QAData(path, tuple(questions), tuple(docs))


def load_qa(dataset: str, path: str | Path) -> QAData:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise EvalInputError(f"{dataset} file {p} does not exist; expected {FORMATS[dataset]}")
    return _load(dataset, str(p), p.stat().st_mtime)
