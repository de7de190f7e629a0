"""Real-context QA (qa_1: SQuAD v2 dev, qa_2: HotpotQA dev-distractor): the gold paragraphs among distractors."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EvalInputError
from ..io import read_json
from .fitting import Draft, prefix_sums, size_rng, sized_pool, split_template
from .tasks import DOCUMENT_PROMPT, QA_ANSWER_PREFIX, QA_TEMPLATE, TaskSpec

if TYPE_CHECKING:
    from .sources import BuildContext

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


def qa_draft(spec: TaskSpec, ctx: "BuildContext") -> Draft:
    data = ctx.sources.qa(spec.params["dataset"])
    question = data.questions[ctx.index % len(data.questions)]  # sample i asks question i, as the reference does
    rng = random.Random(ctx.seed)
    gold, more = list(question.context), list(question.more_context)
    rng.shuffle(more)
    excluded = set(gold) | set(more)
    rest = [i for i in range(len(data.docs)) if i not in excluded]
    rng.shuffle(rest)
    order = gold + more + rest  # any prefix = the gold documents, then same-article ones, then random others

    units, counts = sized_pool(lambda start, stop: ["\n\n" + data.docs[j] for j in order[start:stop]], ctx.counter,
                               ctx.budget, limit=len(order))
    header = int(ctx.counter.pieces([DOCUMENT_PROMPT.format(i=10, document="")])[0])
    cum = prefix_sums(counts + header)
    head, tail = split_template(QA_TEMPLATE, query=question.query)
    tail += QA_ANSWER_PREFIX

    def render(n: int) -> tuple[str, dict]:
        chosen = order[:n]
        size_rng(ctx.seed, n).shuffle(chosen)
        context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=data.docs[j]) for i, j in enumerate(chosen))
        return head + context + tail, {"answers": list(question.outputs)}

    return Draft(render, lambda n: int(cum[n]), n_min=len(gold), n_max=len(units),
                 exhausted=f"{spec.params['dataset']} file {data.path} ({len(data.docs)} documents)")
