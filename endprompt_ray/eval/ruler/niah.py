"""Needle-in-a-haystack samples (the eight niah_* tasks): keys/values, needle placement, the three haystack kinds."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from endprompt_ray.eval.ruler.fitting import Draft, prefix_sums, size_rng, sized_pool, split_template
from endprompt_ray.eval.ruler.haystack import noise_bounds, noise_estimator, noise_lines
from endprompt_ray.eval.ruler.tasks import DEPTHS, NEEDLE, NIAH_ANSWER_PREFIX, NIAH_TEMPLATE, TaskSpec
from endprompt_ray.eval.ruler.words import random_value

if TYPE_CHECKING:
    from endprompt_ray.eval.ruler.sources import BuildContext


def singular(text: str) -> str:
    """The reference's rewording when exactly one value is asked for: "Some ... are" -> "A ... is"."""
    return (text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer"))


def _insert_at_random_lines(lines: list[str], needles: list[str], rng: random.Random) -> list[str]:
    lines = list(lines)
    for index, needle in zip(sorted(rng.sample(range(len(lines)), len(needles)), reverse=True), needles):
        lines.insert(index, needle)
    return lines


def _insert_at_depths(sentences: list[str], needles: list[str], rng: random.Random) -> str:
    cuts = sorted(int(len(sentences) * depth / 100) for depth in rng.sample(DEPTHS, len(needles)))
    parts, start = [], 0
    for cut, needle in zip(cuts, needles):
        parts += [" ".join(sentences[start:cut]), needle]
        start = cut
    parts.append(" ".join(sentences[start:]))
    return " ".join(parts)


def niah_draft(spec: TaskSpec, ctx: BuildContext) -> Draft:
    p = spec.params
    rng = random.Random(ctx.seed)
    num_k, num_v, num_q = max(p["num_needle_k"], p["num_needle_q"]), p["num_needle_v"], p["num_needle_q"]
    type_k, type_v, haystack = p["type_needle_k"], p["type_needle_v"], p["type_haystack"]

    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(random_value(type_k, rng))
        values.append([random_value(type_v, rng) for _ in range(num_v)])
        needles += [NEEDLE.format(type_needle_v=type_v, key=keys[-1], value=v) for v in values[-1]]
    needle_of = {v: NEEDLE.format(type_needle_v=type_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs}
    rng.shuffle(needles)
    picked = rng.sample(range(num_k), num_q)
    queries = [keys[i] for i in picked]
    answers = [v for i in picked for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]

    template, prefix, noun = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX, type_v
    if num_q * num_v == 1:
        template, prefix, noun = singular(template), singular(prefix), type_v[:-1]
    head, tail = split_template(template, type_needle_v=noun, query=query)
    tail += prefix.format(type_needle_v=noun, query=query)

    def finish(context: str) -> tuple[str, dict]:
        depths = {v: round(100 * context.find(needle_of[v]) / max(1, len(context)), 2) for v in answers}
        return head + context + tail, {"answers": answers, "depths": depths}

    if haystack == "noise":
        estimate = noise_estimator(ctx.counter)
        n_min, n_max = noise_bounds(estimate, ctx.budget, len(needles))
        return Draft(render=lambda n: finish("\n".join(_insert_at_random_lines(noise_lines(n), needles,
                                                                               size_rng(ctx.seed, n)))),
                     estimate=estimate, n_min=n_min, n_max=n_max)

    if haystack == "needle":
        pool_rng = random.Random(ctx.seed + 1)
        distractors, counts = sized_pool(
            lambda start, stop: [NEEDLE.format(type_needle_v=type_v, key=random_value(type_k, pool_rng),
                                               value=random_value(type_v, pool_rng)) for _ in range(start, stop)],
            ctx.counter, ctx.budget, cache=False)
        cum = prefix_sums(counts)
        return Draft(render=lambda n: finish("\n".join(_insert_at_random_lines(distractors[:n], needles,
                                                                               size_rng(ctx.seed, n)))),
                     estimate=lambda n: int(cum[n]), n_min=len(needles), n_max=len(distractors))

    corpus = ctx.sources.corpus()
    cum = corpus.word_prefix_sums(ctx.counter)
    return Draft(render=lambda n: finish(_insert_at_depths(corpus.sentences(n), needles, size_rng(ctx.seed, n))),
                 estimate=lambda n: int(cum[n]), n_min=1, n_max=len(corpus.words),
                 exhausted=f"essay corpus {corpus.path} ({len(corpus.words)} words)")
