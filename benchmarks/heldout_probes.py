"""Held-out retrieval probes and real-text perplexity on the toy base, its rope-only extension and SmolLM2-135M.

    python benchmarks/heldout_probes.py probes --model tiny-base [--pi 2048] --lengths 256,1024,2048 --samples 4
    python benchmarks/heldout_probes.py ppl --model smollm2-135m --lengths 2048,8192,16384 --documents 3

`--pi L` evaluates the model with linear RoPE scaling (position interpolation) to L and no training: the rope-only
row. `--samples` is per length and depth (5 depths). `ppl` scores the real-text documents of corpora/real_text.py
(one per package and the Bible when installed, `--documents` in all). Writes summary files under --output and prints
one JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from endprompt_ray.corpora.real_text import DEFAULT_SOURCES, write_real_text
from endprompt_ray.eval.heldout import HELDOUT_PROBES, HeldoutSettings, run_heldout
from endprompt_ray.eval.perplexity import PerplexitySettings, run_perplexity
from endprompt_ray.models.loading import load_config, load_model, load_tokenizer
from endprompt_ray.rope.scaling import RopeScaling, scaled_config


def load(name: str, pi: int | None):
    config = scaled_config(load_config(name), pi, RopeScaling(type="linear")) if pi else None
    return load_model(name, config=config), load_tokenizer(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["probes", "ppl"])
    parser.add_argument("--model", default="tiny-base")
    parser.add_argument("--pi", type=int, default=None, help="linear RoPE scaling to this length (rope-only)")
    parser.add_argument("--lengths", default="256,1024,2048")
    parser.add_argument("--probes", default=",".join(HELDOUT_PROBES))
    parser.add_argument("--samples", type=int, default=4, help="per length and depth")
    parser.add_argument("--documents", type=int, default=3, help="real-text documents (ppl)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    out = Path(args.output or tempfile.mkdtemp(prefix="heldout_"))
    model, tokenizer = load(args.model, args.pi)
    label = f"{args.model}" + (f" PI->{args.pi}" if args.pi else "")
    if args.what == "probes":
        for probe in args.probes.split(","):
            result = run_heldout(model, tokenizer, HeldoutSettings(lengths=lengths, probe=probe,
                                                                   num_samples=args.samples), out / probe)
            print(json.dumps({"model": label, "probe": probe, "by_length": result.by_length,
                              "accuracy": {n: result.accuracy[n] for n in lengths}, "samples": result.samples,
                              "min_fill": result.min_fill}))
        return
    per_source = max(1, -(-args.documents // len(DEFAULT_SOURCES)))
    report = write_real_text(out / "real_text.jsonl", max_documents=per_source)
    docs = out / "real_text_subset.jsonl"  # the first document of each source, then the second, ...
    rows = (out / "real_text.jsonl").read_text().splitlines()
    by_source: dict[str, list[str]] = {}
    for row in rows:
        by_source.setdefault(json.loads(row)["source"], []).append(row)
    interleaved = [r for i in range(per_source) for rs in by_source.values() for r in rs[i:i + 1]]
    docs.write_text("\n".join(interleaved[:args.documents]) + "\n")
    result = run_perplexity(model, tokenizer, PerplexitySettings(lengths=lengths, documents_path=str(docs),
                                                                 num_documents=args.documents), out / "ppl")
    print(json.dumps({"model": label, "ppl": result.ppl, "tail_ppl": result.tail_ppl, "windows": result.windows,
                      "real_text": report.describe(),
                      "documents": [json.loads(r)["source"] + ":" + json.loads(r)["name"]
                                    for r in interleaved[:args.documents]]}))


if __name__ == "__main__":
    main()
