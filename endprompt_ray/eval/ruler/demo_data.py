"""Stand-in data files in the formats RULER reads, generated from the demo corpus so demos and tests need no downloads.

Scores on them say nothing about published RULER numbers: the real inputs are Paul Graham's essays, SQuAD v2 dev and
HotpotQA dev-distractor, which must be supplied by the user.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from endprompt_ray.corpora.reports import generate_documents

_HEAD = re.compile(r"Report for station (?P<station>[a-z ]+), code (?P<code>\d+)\.")


def _qa_items(num: int, seed: int, sentences: int) -> list[tuple[str, str, str]]:
    """(document, question, answer) triples; the answer is the report's code, found verbatim in the document."""
    out = []
    for doc in generate_documents(num, seed=seed, mean_sentences=sentences):
        m = _HEAD.match(doc)
        out.append((doc, f"Which code is given in the report for station {m['station']}?", m["code"]))
    return out


def write_demo_essay(path: str | Path, num_documents: int = 400, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(generate_documents(num_documents, seed=seed)) + "\n", encoding="utf-8")
    return path


def write_demo_squad(path: str | Path, num_articles: int = 40, paragraphs: int = 5, seed: int = 0) -> Path:
    items = _qa_items(num_articles * paragraphs, seed, sentences=3)
    data = {"version": "v2.0", "data": []}
    for a in range(num_articles):
        paras = []
        for j, (doc, question, answer) in enumerate(items[a * paragraphs:(a + 1) * paragraphs]):
            qas = [{"id": f"{a}-{j}", "question": question, "is_impossible": False,
                    "answers": [{"text": answer, "answer_start": doc.index(answer)}]},
                   {"id": f"{a}-{j}-x", "question": "Which code was never reported?", "is_impossible": True,
                    "answers": [], "plausible_answers": []}]
            paras.append({"context": doc, "qas": qas})
        data["data"].append({"title": f"article {a}", "paragraphs": paras})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_demo_hotpotqa(path: str | Path, num_questions: int = 100, docs_per_question: int = 10,
                        seed: int = 0) -> Path:
    items = _qa_items(num_questions * docs_per_question, seed, sentences=3)
    data = []
    for q in range(num_questions):
        group = items[q * docs_per_question:(q + 1) * docs_per_question]
        _, question, answer = group[0]
        context = [[f"Station log {q}-{j}", [s + " " for s in re.split(r"(?<=\.) ", doc)]]
                   for j, (doc, _, _) in enumerate(group)]
        data.append({"_id": str(q), "question": question, "answer": answer, "type": "bridge", "level": "easy",
                     "supporting_facts": [[context[0][0], 0]], "context": context})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
