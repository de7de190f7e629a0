"""Time building RULER prompts for all 13 tasks at 65536 tokens: prefix-sum fitting vs re-tokenising every probe.

    python benchmarks/ruler_fit.py [--length 65536] [--samples 1]

Both fitters get the same drafts (same seeds, same haystacks) and the same tiny tokenizer; the naive one bisects the
haystack size and tokenises the whole prompt at every probe. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from endprompt_ray.eval.ruler.demo_data import write_demo_essay, write_demo_hotpotqa, write_demo_squad  # noqa: E402
from endprompt_ray.eval.ruler.fitting import Draft, Fitted, TokenCounter, TooShort, fit  # noqa: E402
from endprompt_ray.eval.ruler.samples import generate_samples  # noqa: E402
from endprompt_ray.eval.ruler.sources import Sources  # noqa: E402
from endprompt_ray.eval.ruler.tasks import ALL_TASKS  # noqa: E402
from endprompt_ray.models.loading import load_tokenizer  # noqa: E402


def naive_fit(draft: Draft, counter: TokenCounter, budget: int, target: int | None = None) -> Fitted:
    """Bisect the haystack size, tokenising the whole rendered prompt at every probe."""
    def tokens(n: int) -> int:
        return counter.prompt(draft.render(n)[0])

    lo, hi = draft.n_min, draft.n_max
    if tokens(lo) > budget:
        raise TooShort(tokens(lo), budget)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tokens(mid) <= budget else (lo, mid - 1)
    text, extras = draft.render(lo)
    return Fitted(text, extras, lo, counter.prompt(text))


def run(fitter, tokenizer, sources: Sources, length: int, samples: int) -> dict:
    counter = TokenCounter(tokenizer)
    per_task, fills = {}, []
    start = time.perf_counter()
    for task in ALL_TASKS:
        t0 = time.perf_counter()
        built = generate_samples(task, length, samples, counter, sources, seed=42, fitter=fitter)
        per_task[task] = round(time.perf_counter() - t0, 3)
        fills += [s.fill for s in built]
        assert all(s.prompt_tokens + s.tokens_to_generate <= length for s in built)
    return {"seconds": round(time.perf_counter() - start, 3), "whole_prompt_tokenisations": counter.tokenisations,
            "min_fill": round(min(fills), 4), "per_task_seconds": per_task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=65536)
    parser.add_argument("--samples", type=int, default=1, help="samples per task")
    args = parser.parse_args()
    tokenizer = load_tokenizer("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        sources = Sources(str(write_demo_essay(Path(tmp) / "essay.txt", num_documents=600)),
                          str(write_demo_squad(Path(tmp) / "squad.json", num_articles=300)),
                          str(write_demo_hotpotqa(Path(tmp) / "hotpot.json", num_questions=300)))
        # Warm the shared caches (word lists, corpus reading) so neither method pays for them.
        generate_samples("niah_single_2", 4096, 1, TokenCounter(tokenizer), sources)
        generate_samples("qa_1", 4096, 1, TokenCounter(tokenizer), sources)
        generate_samples("qa_2", 4096, 1, TokenCounter(tokenizer), sources)
        prefix = run(fit, tokenizer, sources, args.length, args.samples)
        naive = run(naive_fit, tokenizer, sources, args.length, args.samples)
    print(json.dumps({"length": args.length, "tasks": len(ALL_TASKS), "samples_per_task": args.samples,
                      "tokenizer": "tiny (byte-level BPE, vocab 1024)", "prefix_sum_fit": prefix,
                      "retokenise_every_probe": naive,
                      "speedup": round(naive["seconds"] / prefix["seconds"], 2)}, indent=2))


if __name__ == "__main__":
    main()
