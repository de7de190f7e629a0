"""Variable tracking (vt): chains "VAR B = VAR A" hidden in noise, with one worked example in front of the question."""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

from endprompt_ray.eval.ruler.fitting import Draft, TooShort, fit, size_rng, split_template
from endprompt_ray.eval.ruler.haystack import noise_bounds, noise_estimator, noise_lines
from endprompt_ray.eval.ruler.tasks import TaskSpec, VT_ANSWER_PREFIX, VT_ICL_TOKENS, VT_ICL_VALUE, VT_TEMPLATE
from endprompt_ray.eval.ruler.words import random_letters, unique_letters

if TYPE_CHECKING:
    from endprompt_ray.eval.ruler.fitting import TokenCounter
    from endprompt_ray.eval.ruler.sources import BuildContext


def make_chains(rng: random.Random, num_chains: int, num_hops: int, is_icl: bool) -> tuple[list[list[str]], list]:
    """Variable names per chain and the assignment lines; the example uses 3-letter names and value 12345."""
    k = 3 if is_icl else 5
    hops = min(10, num_hops) if is_icl else num_hops
    names = unique_letters(rng, (hops + 1) * num_chains, k, exclude=frozenset({"VAR"}))
    variables, chains = [], []
    for c in range(num_chains):
        these = names[c * (hops + 1):(c + 1) * (hops + 1)]
        value = VT_ICL_VALUE if is_icl else str(rng.randint(10000, 99998))
        variables.append(these)
        chains.append([f"VAR {these[0]} = {value}"] + [f"VAR {these[j + 1]} = VAR {these[j]} " for j in range(hops)])
    return variables, chains


def _draft(counter: "TokenCounter", seed: int, budget: int, num_chains: int, num_hops: int, is_icl: bool,
           preamble: str = "") -> Draft:
    rng = random.Random(seed)
    variables, chains = make_chains(rng, num_chains, num_hops, is_icl)
    value = chains[0][0].split("=")[-1].strip()
    num_v = len(variables[0])
    head, tail = split_template(VT_TEMPLATE, query=value)
    tail += VT_ANSWER_PREFIX.format(num_v=num_v, query=value)

    def render(n: int) -> tuple[str, dict]:
        lines = noise_lines(n)
        place = size_rng(seed, n)
        for chain in chains:
            for j, pos in enumerate(sorted(place.sample(range(len(lines)), len(chain)))):
                lines.insert(pos + j, chain[j])
        context = "\n".join(lines).replace(". \n", ".\n")
        return preamble + head + context + tail, {"answers": list(variables[0])}

    estimate = noise_estimator(counter)
    n_min, n_max = noise_bounds(estimate, budget, len(chains[0]))
    return Draft(render, estimate, n_min=n_min, n_max=n_max)


def icl_example(counter: "TokenCounter", spec: TaskSpec, seed: int) -> str:
    """The worked example, built once per tokenizer: a question of at most 500 tokens, then its answer (the
    reference sizes the example's question alone to 500 tokens and appends the answer afterwards)."""
    key = ("vt_icl", spec.params["num_chains"], spec.params["num_hops"], seed)
    if key not in counter.memo:
        draft = _draft(counter, seed, VT_ICL_TOKENS, spec.params["num_chains"], spec.params["num_hops"], True)
        try:
            example = fit(draft, counter, VT_ICL_TOKENS)
        except TooShort as err:  # a verbose tokenizer: the shortest possible example is the closest to 500 tokens
            example = fit(draft, counter, err.needed)
        counter.memo[key] = example.prompt + " " + " ".join(example.extras["answers"]) + "\n"
    return counter.memo[key]


def randomize_icl(example: str, num_hops: int, rng: random.Random) -> str:
    """Fresh names and value in the example for every sample, so the answer cannot be copied from it."""
    for name in example.strip().split()[-min(10, num_hops) - 1:]:
        example = re.sub(rf"\b{name}\b", random_letters(rng, len(name)), example)
    return example.replace(VT_ICL_VALUE, str(rng.randint(10000, 99998)))


def vt_draft(spec: TaskSpec, ctx: "BuildContext") -> Draft:
    example = icl_example(ctx.counter, spec, ctx.run_seed)
    preamble = randomize_icl(example, spec.params["num_hops"], random.Random(ctx.seed + 7)) + "\n"
    return _draft(ctx.counter, ctx.seed, ctx.budget, spec.params["num_chains"], spec.params["num_hops"], False,
                  preamble)
