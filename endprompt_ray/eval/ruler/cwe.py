"""Common words extraction (cwe): a numbered word list where 10 words repeat more often; one worked example first."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from endprompt_ray.eval.ruler.fitting import Draft, prefix_sums, size_rng, split_template
from endprompt_ray.eval.ruler.tasks import CWE_ANSWER_PREFIX, CWE_MIN_WORDS, CWE_SHORT_CONTEXT, CWE_TEMPLATE, TaskSpec
from endprompt_ray.eval.ruler.words import common_word_pool, random_word

if TYPE_CHECKING:
    from endprompt_ray.eval.ruler.sources import BuildContext


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def word_list(words: list[str], num_cw: int, common_repeats: int, uncommon_repeats: int,
              rng: random.Random) -> tuple[str, list[str]]:
    """The first num_cw words repeat common_repeats times, the rest uncommon_repeats times, shuffled and numbered."""
    common, uncommon = words[:num_cw], words[num_cw:]
    items = common * common_repeats + uncommon * uncommon_repeats
    rng.shuffle(items)
    return numbered(items), common


def repeats(spec: TaskSpec, length: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """(example words, example common/uncommon repeats), (sample repeats): fewer repeats below 4096 tokens."""
    if length < CWE_SHORT_CONTEXT:
        return (20, 3, 1), (6, 1)
    return (40, 10, 3), (spec.params["freq_cw"], spec.params["freq_ucw"])


def _word_order(rng: random.Random, count: int) -> list[str]:
    """`count` distinct words: the wonderwords pool in random order, then adjective-noun words if more are needed."""
    pool = common_word_pool()
    order = rng.sample(pool, min(count, len(pool)))
    seen = set(pool)
    while len(order) < count:  # the reference falls back to a larger English list here; we cannot ship one
        word = random_word(rng)
        if word not in seen:
            seen.add(word)
            order.append(word)
    return order


def cwe_draft(spec: TaskSpec, ctx: "BuildContext") -> Draft:
    num_cw = spec.params["num_cw"]
    (ex_words, ex_common, ex_uncommon), (n_common, n_uncommon) = repeats(spec, ctx.length)
    rng = random.Random(ctx.seed)
    shots = []
    for _ in range(spec.params["num_fewshot"]):
        context, answer = word_list(rng.sample(common_word_pool(), ex_words), num_cw, ex_common, ex_uncommon, rng)
        shots.append(CWE_TEMPLATE.format(context=context) + CWE_ANSWER_PREFIX + " " + numbered(answer))
    head, tail = split_template(CWE_TEMPLATE)
    head = "\n".join(shots) + "\n" + head
    tail += CWE_ANSWER_PREFIX

    # Every entry "i. word" costs at least two tokens, which bounds how many words can fit.
    max_entries = max(ctx.budget // 2, num_cw * n_common + n_uncommon)
    # The reference's search starts at 10 words (its `incremental`): the common words with no uncommon ones. A draw
    # whose words are too long even then is redrawn by `samples.build_samples`, as the reference redraws.
    n_min = max(CWE_MIN_WORDS, num_cw)
    n_max = max(n_min, (max_entries - num_cw * n_common) // n_uncommon + num_cw)
    order = _word_order(rng, n_max)
    words_cum = prefix_sums(ctx.counter.pieces([" " + w for w in order]))
    numbers_cum = prefix_sums(ctx.counter.pieces([f" {i}." for i in range(1, max_entries + 1)]))

    def entries(n: int) -> int:
        return num_cw * n_common + (n - num_cw) * n_uncommon

    def estimate(n: int) -> int:
        common = n_common * words_cum[num_cw]
        return int(numbers_cum[min(entries(n), max_entries)] + common + n_uncommon * (words_cum[n] - words_cum[num_cw]))

    def render(n: int) -> tuple[str, dict]:
        context, common = word_list(order[:n], num_cw, n_common, n_uncommon, size_rng(ctx.seed, n))
        return head + context + tail, {"answers": common}

    return Draft(render, estimate, n_min=n_min, n_max=n_max)
