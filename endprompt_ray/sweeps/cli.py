"""Ray Tune sweep over EndPrompt's anchor (mode and offset), terminal prompt (source and length) and RoPE scale.

Each trial fine-tunes and evaluates through the same pipeline as `endprompt extend`, as a nested MLflow run under
one parent run per sweep; the parent holds the table, a plot per swept dimension and the best config, which
`endprompt extend --config <sweep dir>/best_config.yaml` runs unchanged. Running the same command again
continues an interrupted sweep (finished trials are kept). Standalone it starts a local Ray; under
`ray job submit` it attaches to the cluster (see cluster/README.md for the MLflow address trials need there).

examples:
  endprompt sweep                                        # the CPU default on the toy base (space anchor_space)
  endprompt sweep --space anchor_space_llama3            # a shipped space by name, or a path to your own YAML
  endprompt sweep --search optuna --num-samples 12       # TPE (pip install optuna)
  endprompt sweep --set train.max_steps=200 --name quick # fixed override, new sweep name
The config fields --set takes are those `endprompt extend --help` lists.
"""

from __future__ import annotations

import argparse
import sys

from endprompt_ray.errors import ConfigError
from endprompt_ray.jobs.extend import quiet_logs
from endprompt_ray.resources import SWEEP, ResourceNotFoundError, find_sweep, shipped
from endprompt_ray.runtime.ray_session import ray_logs_dir
from endprompt_ray.sweeps import load_sweep, run_sweep
from endprompt_ray.sweeps.spec import SCHEDULERS, SEARCHES

DEFAULT_SPACE = "anchor_space"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="endprompt sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=DEFAULT_SPACE, metavar="SPACE_OR_YAML",
                        help=f"a shipped sweep space ({', '.join(shipped(SWEEP))}) or a path to a sweep YAML "
                             "(default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="fixed config override for every trial, e.g. --set train.max_steps=200 (repeatable)")
    parser.add_argument("--name", help="sweep name (default: the file's); the same name continues that sweep")
    parser.add_argument("--search", choices=SEARCHES, help="override the file's search algorithm")
    parser.add_argument("--scheduler", choices=SCHEDULERS, help="override the file's scheduler (none: no early stop)")
    parser.add_argument("--num-samples", type=int, help="grid: repeats of the grid; other searches: trials")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster holds)")
    parser.add_argument("--retry-failed", action="store_true", help="when continuing, run failed trials again")
    return parser.parse_args(argv)


def _space_file(space: str):
    try:
        return find_sweep(space)
    except ResourceNotFoundError as err:
        raise ConfigError(str(err)) from err


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_sweep(_space_file(args.space), args.overrides, name=args.name, search=args.search,
                          scheduler_type=args.scheduler, num_samples=args.num_samples,
                          max_concurrent_trials=args.max_concurrent)
    except ConfigError as err:
        print(f"sweep error: {err}", file=sys.stderr)
        return 2
    quiet_logs()
    print(f"sweep '{spec.name}': {spec.search} search, metric {spec.metric} ({spec.mode}), "
          f"scheduler {spec.scheduler.type}; space: {', '.join(map(str, spec.space))}", flush=True)
    try:
        outcome = run_sweep(spec, retry_failed=args.retry_failed)
    except ConfigError as err:
        print(f"sweep error: {err}", file=sys.stderr)
        return 2
    done = sum(r.status == "done" for r in outcome.rows)
    print(f"\nsweep '{spec.name}'{' (continued)' if outcome.continued else ''}: {len(outcome.rows)} trials, "
          f"{done} finished, {len(outcome.failed)} failed, up to {outcome.concurrent} at once; "
          f"best first by {spec.metric} ({spec.mode})\n\n{outcome.table}\n")
    for name, path in outcome.files.items():
        print(f"  {name}: {path}")
    if "best_config" in outcome.files:
        print(f"  run the best config: endprompt extend --config {outcome.files['best_config']}")
    print(f"  MLflow: parent run {outcome.parent_run_id} (one child run per trial) at {outcome.tracking_uri}")
    if outcome.tracking_uri.startswith("sqlite:"):
        print(f"  open the UI: mlflow ui --backend-store-uri {outcome.tracking_uri}")
    print(f"  Tune experiment (continue with the same command): {outcome.experiment_path}; "
          f"Ray logs: {ray_logs_dir()}")
    if outcome.interrupted:
        print(f"\ninterrupted: run the same command again to continue sweep '{spec.name}' "
              "(finished trials are kept, unfinished ones resume from their checkpoints)")
        return 130
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
