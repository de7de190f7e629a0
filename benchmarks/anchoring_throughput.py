"""Anchoring throughput: the vectorised batch builder against a per-token Python loop, same inputs, same outputs.

Prints JSON: samples/s and tokens/s for both, and the speed-up, at the paper setting (P = 8192, L = 65536).
  python benchmarks/anchoring_throughput.py [--docs 64] [--anchor random]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from endprompt_ray.method.anchoring import AnchorSpec, build_samples, sample_keys, to_flat, uniform_draws


def per_token_reference(documents, spec: AnchorSpec) -> dict[str, np.ndarray]:
    """The obvious implementation: one Python step per token."""
    P, L, b = spec.physical_length, spec.target_length, spec.prompt_length
    flat, starts, lengths = to_flat(documents)
    draws = uniform_draws(sample_keys(flat, starts, lengths, spec.seed), P - b, L - b)
    rows = {"input_ids": [], "position_ids": [], "labels": []}
    for i, doc in enumerate(documents):
        ids, pos = [], []
        for t in range(P - b):
            ids.append(int(doc[t]))
            pos.append(t)
        start = L - b - spec.anchor_offset if spec.anchor == "fixed" else int(draws[i])
        for j in range(b):
            ids.append(int(doc[len(doc) - b + j]))
            pos.append(start + j)
        rows["input_ids"].append(ids)
        rows["position_ids"].append(pos)
        rows["labels"].append(list(ids))
    return {k: np.array(v, dtype=np.int64) for k, v in rows.items()}


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--anchor", choices=["fixed", "random"], default="random")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 128000, size=int(n)) for n in rng.integers(8192, 16384, size=args.docs)]
    spec = AnchorSpec(physical_length=8192, target_length=65536, prompt_source="tail", tail_length=20,
                      anchor=args.anchor, short_docs="skip").validate()
    fast, _ = build_samples(docs, spec)
    slow = per_token_reference(docs, spec)
    for key in fast:
        np.testing.assert_array_equal(fast[key], slow[key])  # same result, or the timing means nothing
    t_fast = timed(lambda: build_samples(docs, spec), args.repeats)
    t_slow = timed(lambda: per_token_reference(docs, spec), 1)
    tokens = args.docs * spec.physical_length
    print(json.dumps({"benchmark": "anchoring_throughput", "P": 8192, "L": 65536, "docs": args.docs,
                      "anchor": args.anchor, "vectorised_s": round(t_fast, 4), "per_token_loop_s": round(t_slow, 4),
                      "vectorised_tokens_per_s": round(tokens / t_fast), "loop_tokens_per_s": round(tokens / t_slow),
                      "speedup": round(t_slow / t_fast, 1)}, indent=2))


if __name__ == "__main__":
    main()
