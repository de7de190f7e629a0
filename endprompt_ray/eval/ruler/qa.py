"""Real-context QA (qa_1: SQuAD v2 dev, qa_2: HotpotQA dev-distractor): the gold paragraphs among distractors."""

from __future__ import annotations

import random

from endprompt_ray.eval.ruler.fitting import Draft, prefix_sums, size_rng, sized_pool, split_template
from endprompt_ray.eval.ruler.sources import BuildContext
from endprompt_ray.eval.ruler.tasks import DOCUMENT_PROMPT, QA_ANSWER_PREFIX, QA_TEMPLATE, TaskSpec


def qa_draft(spec: TaskSpec, ctx: BuildContext) -> Draft:
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
