"""Data pipeline throughput: the Ray Data pipeline the trainer streams from (read -> tokenise -> anchor), against a raw
single-threaded `tokenizers` batch encode of the same corpus, the tokenise stage's own limit.

    python benchmarks/data_throughput.py [--docs 4000] [--repeats 3] [--output data_throughput.json]
                                         [--set data.tokenizer_actors=2 ...]

The corpus is the generated demo corpus written to a JSONL file, read back as any user corpus would be. Both sides run
over the same documents, alternately, --repeats times each; each is rated by its fastest run over the same token count
(the corpus tokens). A pipeline run is timed from `build_dataset` until the last anchored batch has been consumed, on
a Ray whose worker processes a small warm-up pass has started; the target is judged on that end-to-end ratio.
`ratio_after_first_batch` leaves out the time to the first batch (the stages' start-up) to show what the stages
sustain. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the reference is single-threaded, and Ray workers inherit this

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from endprompt_ray.config.loader import load_config
from endprompt_ray.corpora.reports import generate_documents  # noqa: E402
from endprompt_ray.data.dataset import build_dataset, data_report  # noqa: E402
from endprompt_ray.errors import ConfigError  # noqa: E402
from endprompt_ray.models.loading import load_tokenizer  # noqa: E402

WARMUP_DOCS = 64
CONSUMER_BATCH = 64  # rows per batch the consumer pulls, as a trainer shard iterator would


def write_corpus(path: Path, num_documents: int) -> list[str]:
    texts = generate_documents(num_documents, seed=0)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def raw_encode(tokenizer, texts: list[str]) -> tuple[float, int]:
    """(seconds, tokens) for one single-threaded `tokenizers` batch encode of every text."""
    backend = tokenizer.backend_tokenizer
    started = time.perf_counter()
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    seconds = time.perf_counter() - started
    return seconds, sum(len(e) for e in encodings)


def run_pipeline(corpus: Path, tokenizer, overrides: list[str]) -> dict:
    """Build the dataset and consume every anchored batch: seconds in all and to the first batch, samples (in all and
    in the first batch), and the data report."""
    cfg = load_config(None, [f"data.paths=[{corpus}]", "model.name_or_path=tiny", *overrides])
    started = time.perf_counter()
    dataset, stats = build_dataset(cfg, tokenizer)
    sizes, first_batch_s = [], 0.0
    for batch in dataset.iter_batches(batch_size=CONSUMER_BATCH, batch_format="numpy"):
        first_batch_s = first_batch_s or time.perf_counter() - started
        sizes.append(len(batch["input_ids"]))
    if not sizes:
        raise RuntimeError(f"the pipeline built no samples from {corpus}; use more --docs or check --set values")
    return {"seconds": time.perf_counter() - started, "first_batch_s": first_batch_s, "samples": sum(sizes),
            "first_batch_samples": sizes[0], "data_report": data_report(stats)}


def steady_ratio(raw_s: float, pipe: dict) -> float:
    """Pipeline / raw tokens/s once the first batch is out, i.e. without the stages' start-up (mostly the tokenizer
    actor's process start and its `ray.data` import): the corpus share left after the first batch, by sample count,
    over the time it took."""
    rest = 1 - pipe["first_batch_samples"] / pipe["samples"]
    return raw_s * rest / max(pipe["seconds"] - pipe["first_batch_s"], 1e-9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=4000, help="demo documents in the corpus (default 4000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for the pipeline, e.g. data.batch_size=256 (repeatable)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side, alternating (default 3)")
    parser.add_argument("--target", type=float, default=0.70, help="pipeline / raw tokens/s to pass (default 0.70)")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.docs < 1 or args.repeats < 1:
        parser.error("--docs and --repeats must be at least 1")
    return args


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    """Raw encode and pipeline runs alternate, `--repeats` of each, so both sides see the same machine load; each side
    is rated by its fastest run (the least disturbed by other processes)."""
    tokenizer = load_tokenizer("tiny")
    write_corpus(workdir / "warmup.jsonl", WARMUP_DOCS)
    run_pipeline(workdir / "warmup.jsonl", tokenizer, args.overrides)  # start Ray's worker processes
    texts = write_corpus(workdir / "corpus.jsonl", args.docs)
    raws, pipes = [], []
    for _ in range(args.repeats):
        raws.append(raw_encode(tokenizer, texts))
        pipes.append(run_pipeline(workdir / "corpus.jsonl", tokenizer, args.overrides))
    raw_s, tokens = min(raws)
    pipe = min(pipes, key=lambda run: run["seconds"])
    ratio = raw_s / pipe["seconds"]  # same tokens on both sides: the tokens/s ratio
    return {
        "benchmark": "data_throughput", "documents": args.docs, "corpus_tokens": tokens, "overrides": args.overrides,
        "repeats": args.repeats, "cpu_count": os.cpu_count(), "samples": pipe["samples"],
        "data_report": pipe["data_report"],
        "raw_tokenizers": {"seconds": round(raw_s, 3), "tokens_per_s": round(tokens / raw_s),
                           "every_run_s": [round(s, 3) for s, _ in raws]},
        "ray_data_pipeline": {"seconds": round(pipe["seconds"], 3), "first_batch_s": round(pipe["first_batch_s"], 3),
                              "tokens_per_s": round(tokens / pipe["seconds"]),
                              "every_run_s": [round(run["seconds"], 3) for run in pipes]},
        "ratio": round(ratio, 3),
        "ratio_after_first_batch": round(steady_ratio(raw_s, pipe), 3),
        "target": {"min_ratio": args.target, "met": ratio >= args.target},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        load_config(None, args.overrides)  # a bad --set fails here, before Ray starts
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp:
        result = measure(args, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
