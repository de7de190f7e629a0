"""RoPE scalings compared without fine-tuning: PI (linear), dynamic NTK, YaRN and searched LongRoPE factors, by
perplexity and passkey retrieval at the target length and at the original window (where LongRoPE's attention
factor still acts), with the project's own evaluation (held-out documents the search never saw).

    python -m endprompt_ray.longrope.compare --target 2048=outputs/longrope-search/best_factors.yaml --target 1024

prints one JSON row per (target, variant) and a markdown table; a target without a factors file compares the
other three only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from endprompt_ray.eval.suites import SuiteOptions, evaluate_suites
from endprompt_ray.models.loading import load_config, load_model, load_tokenizer
from endprompt_ray.rope.longrope import resolve_factors
from endprompt_ray.rope.scaling import RopeScaling, describe, scaled_config


def compare(model: str, targets: dict[int, str | None], num_documents: int = 8, passkey_samples: int = 4,
            out_dir: Path | None = None) -> list[dict]:
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="longrope-compare-"))
    base, tokenizer = load_config(model), load_tokenizer(model)
    window = base.max_position_embeddings
    options = SuiteOptions(batch_size=4, passkey_samples=passkey_samples, ppl_num_documents=num_documents,
                           progress=False)
    rows = []
    for target, factors_file in sorted(targets.items()):
        variants = [("base", RopeScaling(type="none")), ("PI", RopeScaling(type="linear")),
                    ("NTK", RopeScaling(type="dynamic")), ("YaRN", RopeScaling(type="yarn"))]
        if factors_file:
            variants.append(("LongRoPE", resolve_factors(RopeScaling(type="longrope", factors_file=factors_file))))
        lengths = [window, target]
        for name, rope in variants:
            started = time.perf_counter()
            loaded = load_model(model, config=scaled_config(base, target, rope)).eval()
            results = evaluate_suites(loaded, tokenizer, ["ppl", "passkey"], lengths, out_dir / f"{target}-{name}",
                                      options)
            ppl, passkey = results["ppl"], results["passkey"]
            rows.append({"target": target, "scale": target / window, "variant": name,
                         "rope": describe(base, target, rope), "ppl_window": ppl.ppl[window],
                         "ppl_target": ppl.ppl[target], "passkey_window": passkey.by_length[window],
                         "passkey_target": passkey.by_length[target], "seconds": time.perf_counter() - started})
    return rows


def markdown(rows: list[dict], window: int) -> str:
    lines = [f"| scale (target) | variant | PPL @{window} | PPL @target | passkey % @{window} | passkey % @target |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']:g}x ({r['target']}) | {r['variant']} | {r['ppl_window']:.2f} | "
                     f"{r['ppl_target']:.2f} | {r['passkey_window']:.0f} | {r['passkey_target']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m endprompt_ray.longrope.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-base", help="model.name_or_path (default %(default)s)")
    parser.add_argument("--target", action="append", required=True, metavar="LENGTH[=FACTORS_FILE]",
                        help="a target length, with the best_factors.yaml searched for it (repeatable)")
    parser.add_argument("--documents", type=int, default=8, help="held-out documents for perplexity")
    parser.add_argument("--passkey-samples", type=int, default=4, help="passkey samples per depth (5 depths)")
    args = parser.parse_args(argv)
    targets = {}
    for item in args.target:
        length, _, path = item.partition("=")
        targets[int(length)] = path or None

    rows = compare(args.model, targets, args.documents, args.passkey_samples)
    for row in rows:
        print(json.dumps(row))
    print(markdown(rows, load_config(args.model).max_position_embeddings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
