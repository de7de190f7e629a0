"""Evaluate a model directory on RULER (and optionally LongBench); print a summary table, optionally log to MLflow.

    python pipelines/evaluate.py --model DIR --lengths 4096,8192 --tasks niah_single_1,vt --samples 10 --output out/
    python pipelines/evaluate.py --model tiny --lengths 1024 --samples 2          # the locally built tiny model

Default: every RULER task whose data is available, at the model's window (config.max_position_embeddings).
Under `ray job submit` it attaches to the cluster; standalone it starts a local Ray only when it spreads work over
several GPUs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout even when not pip-installed

from endprompt_ray.eval.ruler.tasks import ALL_TASKS  # noqa: E402


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {err}") from err
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (config.json + weights + tokenizer), or 'tiny'")
    p.add_argument("--lengths", type=_csv(int), help="comma-separated target lengths in tokens "
                                                     "(default: the model's max_position_embeddings)")
    p.add_argument("--tasks", type=_csv(str), help="comma-separated RULER tasks (default: all that can run):\n"
                                                   + ", ".join(ALL_TASKS))
    p.add_argument("--samples", type=int, default=10, help="samples per task and length (default 10)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (default 1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--essay", help="essay haystack corpus: a text/JSON/JSONL file or a folder of them")
    p.add_argument("--squad", help="SQuAD v2 dev JSON (qa_1)")
    p.add_argument("--hotpotqa", help="HotpotQA dev-distractor JSON (qa_2)")
    p.add_argument("--workers", type=int, help="Ray actors for generation (default: one per GPU when 2+ GPUs; 0: none)")
    p.add_argument("--skip-ruler", action="store_true", help="run only LongBench")
    p.add_argument("--longbench", metavar="DIR", help="also run LongBench from DIR/data/<dataset>.jsonl")
    p.add_argument("--longbench-datasets", type=_csv(str),
                   help="comma-separated LongBench datasets (default: all found)")
    p.add_argument("--longbench-samples", type=int, help="first N rows per LongBench dataset (default: all)")
    p.add_argument("--longbench-length", type=int, help="LongBench window (default: the model's)")
    p.add_argument("--output", default="eval_output", help="output folder (default ./eval_output)")
    p.add_argument("--mlflow-uri", help="log to this MLflow tracking URI, e.g. sqlite:///mlflow.db")
    p.add_argument("--experiment", default="endprompt-ray-eval", help="MLflow experiment (with --mlflow-uri)")
    p.add_argument("--run-name", help="MLflow run name")
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> list[str]:
    import torch

    from endprompt_ray.eval.generation import load_model_and_tokenizer
    from endprompt_ray.eval.longbench import LongBenchSettings, format_longbench, run_longbench
    from endprompt_ray.eval.ruler import RulerSettings, format_table, run_ruler
    from endprompt_ray.modeling import load_config, resolve_model_path

    path = resolve_model_path(args.model)
    out = Path(args.output)
    lengths = args.lengths or [int(load_config(path).max_position_embeddings)]
    # One in-process model serves both benchmarks unless RULER spreads over Ray actors (they load their own).
    shared = None
    if args.longbench and not args.workers and torch.cuda.device_count() <= 1:
        shared = load_model_and_tokenizer(path)
    model, tokenizer = shared or (path, None)
    results, tables = {}, []
    if not args.skip_ruler:
        settings = RulerSettings(lengths=lengths, tasks=args.tasks, num_samples=args.samples,
                                 batch_size=args.batch_size, seed=args.seed, essay_path=args.essay,
                                 squad_path=args.squad, hotpotqa_path=args.hotpotqa, workers=args.workers)
        results["ruler"] = run_ruler(model, tokenizer, settings, out / "ruler")
        tables.append("RULER\n" + format_table(results["ruler"]))
    if args.longbench:
        settings = LongBenchSettings(args.longbench, args.longbench_datasets, args.longbench_samples,
                                     args.longbench_length, args.batch_size)
        results["longbench"] = run_longbench(model, tokenizer, settings, out / "longbench")
        tables.append("LongBench\n" + format_longbench(results["longbench"]))
    if args.mlflow_uri:
        _log(args, path, lengths, results)
    return tables


def _log(args: argparse.Namespace, path: str, lengths: list[int], results: dict) -> None:
    import mlflow

    from endprompt_ray.eval.longbench import log_longbench_to_mlflow
    from endprompt_ray.eval.ruler import log_ruler_to_mlflow
    from endprompt_ray.tracking import experiment_id

    mlflow.set_tracking_uri(args.mlflow_uri)
    experiment = experiment_id(mlflow.MlflowClient(), args.experiment)
    with mlflow.start_run(experiment_id=experiment, run_name=args.run_name):
        mlflow.log_params({"model": path, "lengths": ",".join(map(str, lengths)),
                           "tasks": ",".join(args.tasks) if args.tasks else "all", "samples": args.samples,
                           "seed": args.seed})
        if "ruler" in results:
            log_ruler_to_mlflow(results["ruler"])
        if "longbench" in results:
            log_longbench_to_mlflow(results["longbench"])


def main(argv=None) -> int:
    args = parse_args(argv)
    from endprompt_ray.eval.errors import EvalInputError
    from endprompt_ray.modeling import ModelLoadError

    try:
        tables = evaluate(args)
    except (EvalInputError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n\n".join(tables))
    print(f"\nfiles under {Path(args.output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
