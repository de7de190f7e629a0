"""Evaluate a model directory on RULER, passkey, perplexity (and LongBench); print tables, optionally log to MLflow.

    endprompt evaluate --model DIR --lengths 4096,8192 --tasks niah_single_1,vt --samples 10 --output out/
    endprompt evaluate --model tiny --lengths 1024 --samples 2          # the locally built tiny model
    endprompt evaluate --model DIR --suites passkey,report_code,ppl --lengths 256,1024,2048

Default: every RULER task whose data is available, at the model's window (config.max_position_embeddings).
Suites: ruler (default), passkey (Landmark's passkey by length x depth), report_code (recall the demo corpus's
station code from the document head), ppl (perplexity by length on held-out documents).
Under `ray job submit` it attaches to the cluster; standalone it starts a local Ray only when it spreads work over
several GPUs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.errors import ModelLoadError
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import load_model_and_tokenizer
from endprompt_ray.eval.ruler.tasks import ALL_TASKS
from endprompt_ray.eval.suites import SUITES as REGISTERED, SuiteOptions, evaluate_suites, format_suites, log_suites
from endprompt_ray.models.loading import load_config, resolve_model_path
from endprompt_ray.runtime.tracking import experiment_id

# The seed pipelines/extend.py evaluates with (run.seed), so that by default both draw the same RULER and passkey
# samples and their numbers compare.
DEFAULT_SEED = ExtendConfig().run.seed

SUITES = tuple(name for name in REGISTERED if name != "longbench")  # LongBench runs with --longbench DIR
FOLDERS = {"ppl": "perplexity"}  # output folders that are not the suite's name


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {err}") from err
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (config.json + weights + tokenizer), or 'tiny'")
    p.add_argument("--lengths", type=_csv(int), help="comma-separated target lengths in tokens "
                                                     "(default: the model's max_position_embeddings)")
    p.add_argument("--tasks", type=_csv(str), help="comma-separated RULER tasks (default: all that can run):\n"
                                                   + ", ".join(ALL_TASKS))
    p.add_argument("--samples", type=int, default=10,
                   help="samples per RULER task and length, and per passkey length and depth (default 10)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (default 1)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the RULER and passkey samples (default {DEFAULT_SEED}, the default run.seed of "
                        "pipelines/extend.py)")
    p.add_argument("--essay", help="essay haystack corpus: a text/JSON/JSONL file or a folder of them")
    p.add_argument("--squad", help="SQuAD v2 dev JSON (qa_1)")
    p.add_argument("--hotpotqa", help="HotpotQA dev-distractor JSON (qa_2)")
    p.add_argument("--workers", type=int, help="Ray actors for generation (default: one per GPU when 2+ GPUs; 0: none)")
    p.add_argument("--suites", type=_csv(str), default=["ruler"],
                   help="comma-separated suites (default ruler): " + ", ".join(SUITES))
    p.add_argument("--passkey-depths", type=_csv(float),
                   help="passkey needle depths, fractions of the filler (default 0,0.25,0.5,0.75,1); --samples "
                        "samples per length and depth")
    p.add_argument("--ppl-documents", metavar="PATH",
                   help="held-out text for ppl: .txt/.md (one document per file), .jsonl, or a folder\n"
                        "(default: demo-corpus reports from a held-out seed)")
    p.add_argument("--ppl-text-field", default="text", help="document field in --ppl-documents .jsonl (default text)")
    p.add_argument("--ppl-num-documents", type=int, default=8,
                   help="first N held-out documents, or N demo documents (default 8)")
    p.add_argument("--ppl-tail-tokens", type=int, default=32, help="tail loss over the last K tokens (default 32)")
    p.add_argument("--skip-ruler", action="store_true", help="leave ruler out of --suites (e.g. to run only LongBench)")
    p.add_argument("--longbench", metavar="DIR", help="also run LongBench from DIR/data/<dataset>.jsonl")
    p.add_argument("--longbench-datasets", type=_csv(str),
                   help="comma-separated LongBench datasets (default: all found)")
    p.add_argument("--longbench-samples", type=int, help="first N rows per LongBench dataset (default: all)")
    p.add_argument("--longbench-length", type=int, help="LongBench window (default: the model's)")
    p.add_argument("--output", default="eval_output", help="output folder (default ./eval_output)")
    p.add_argument("--mlflow-uri", help="log to this MLflow tracking URI, e.g. sqlite:///mlflow.db")
    p.add_argument("--experiment", default="endprompt-ray-eval", help="MLflow experiment (with --mlflow-uri)")
    p.add_argument("--run-name", help="MLflow run name")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _suites(args: argparse.Namespace) -> list[str]:
    """The suites to run, in the registry's order; LongBench last when --longbench is given."""
    unknown = [x for x in args.suites if x not in SUITES]
    if unknown:
        raise EvalInputError(f"unknown suite(s) {', '.join(unknown)} in --suites; choose from {', '.join(SUITES)}")
    chosen = [x for x in SUITES if x in args.suites and not (x == "ruler" and args.skip_ruler)]
    return chosen + ["longbench"] * bool(args.longbench)


def options(args: argparse.Namespace) -> SuiteOptions:
    return SuiteOptions(seed=args.seed, batch_size=args.batch_size, passkey_samples=args.samples,
                        passkey_depths=args.passkey_depths, ppl_documents=args.ppl_documents,
                        ppl_text_field=args.ppl_text_field, ppl_num_documents=args.ppl_num_documents,
                        ppl_tail_tokens=args.ppl_tail_tokens, ruler_tasks=args.tasks, ruler_samples=args.samples,
                        essay_path=args.essay, squad_path=args.squad, hotpotqa_path=args.hotpotqa,
                        ruler_workers=args.workers, longbench_dir=args.longbench,
                        longbench_datasets=args.longbench_datasets, longbench_samples=args.longbench_samples,
                        longbench_length=args.longbench_length)


def evaluate(args: argparse.Namespace) -> list[str]:
    import torch  # heavy: only once the arguments parsed

    suites = _suites(args)
    path = resolve_model_path(args.model)
    lengths = args.lengths or [int(load_config(path).max_position_embeddings)]
    # One in-process model serves every suite unless RULER spreads over Ray actors (they load their own).
    shared = None
    if len(suites) > 1 and not args.workers and torch.cuda.device_count() <= 1:
        shared = load_model_and_tokenizer(path)
    model, tokenizer = shared or (path, None)
    results = evaluate_suites(model, tokenizer, suites, lengths, Path(args.output), options(args), FOLDERS)
    if args.mlflow_uri:
        _log(args, path, lengths, results)
    return format_suites(results)


def _log(args: argparse.Namespace, path: str, lengths: list[int], results: dict) -> None:
    import mlflow  # only with --mlflow-uri

    mlflow.set_tracking_uri(args.mlflow_uri)
    experiment = experiment_id(mlflow.MlflowClient(), args.experiment)
    with mlflow.start_run(experiment_id=experiment, run_name=args.run_name):
        mlflow.log_params({"model": path, "lengths": ",".join(map(str, lengths)), "suites": ",".join(results),
                           "tasks": ",".join(args.tasks) if args.tasks else "all", "samples": args.samples,
                           "seed": args.seed})
        log_suites(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tables = evaluate(args)
    except (EvalInputError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n\n".join(tables))
    print(f"\nfiles under {Path(args.output).resolve()}")
    return 0
