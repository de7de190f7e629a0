"""Search per-frequency RoPE factors (LongRoPE's evolutionary search) with Ray Tune, for rope.type=longrope.

Fitness actors keep the model loaded and only swap factors; each Tune trial scores one candidate (perplexity at the
target length, or LongRoPE2's needle perplexity). Standalone it starts a local Ray; under `ray job submit` it
attaches to the cluster. It writes <output_dir>/<name>/best_factors.yaml and extend_longrope.yaml, which
`endprompt extend` takes as --config, plots, and an MLflow run.

examples:
  endprompt search-rope                                     # toy base 256 -> 2048, CPU, ~10 min
  endprompt search-rope --set mode=longrope2                # critical dimension + needle fitness
  endprompt search-rope --space rope_search_llama3 --set documents=/data/pg19
  endprompt search-rope --resume                            # continue an interrupted search
  endprompt extend --config outputs/longrope-search/extend_longrope.yaml   # EndPrompt on the result
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

import yaml

from endprompt_ray.errors import ConfigError
from endprompt_ray.jobs.extend import quiet_logs
from endprompt_ray.longrope.spec import load_spec
from endprompt_ray.longrope.tune import run_search
from endprompt_ray.resources import (
    ROPE_SEARCH,
    ResourceNotFoundError,
    find_rope_search,
    shipped,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="endprompt search-rope", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", metavar="NAME_OR_YAML",
                        help=f"shipped search settings ({', '.join(shipped(ROPE_SEARCH))}) or a path to a search "
                             "YAML; omitted: the CPU default")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set population=64 (repeatable; see --print-spec)")
    parser.add_argument("--resume", action="store_true", help="resume the search of the same name from Tune's state")
    parser.add_argument("--print-spec", action="store_true", help="print the resolved settings and exit")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.space and find_rope_search(args.space), args.overrides)
    except (ConfigError, ResourceNotFoundError) as err:
        print(f"search error: {err}", file=sys.stderr)
        return 2
    if args.print_spec:
        print(yaml.safe_dump(asdict(spec), sort_keys=False))
        return 0
    log_file = spec.run_dir / "search.log"
    quiet_logs(log_file)
    try:
        result = run_search(spec, resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result.complete:
        print(f"\nsearch interrupted after generation {len(result.curve) - 1} of {spec.iterations}: the files below hold "
              f"the best so far; continue with the same settings and --resume")
    seeds = yaml.safe_load(result.files["best_factors"].read_text())["metadata"]["seeds_ppl"]
    print(f"\nbest fitness {result.best_ppl:.4f} after {result.evaluations} evaluations ({result.failures} failed) in "
          f"{result.wall_time_s:.0f} s; seeds: " + ", ".join(f"{k} {v:.4f}" for k, v in seeds.items()))
    print("best so far by generation: " + " ".join(f"{v:.4f}" for v in result.curve))
    for name, path in result.files.items():
        print(f"  {name}: {path}")
    print(f"  MLflow run {result.mlflow_run_id}: mlflow ui --backend-store-uri {spec.uri}")
    print(f"  fine-tune from it: endprompt extend --config {result.files['extend_config']}")
    print(f"  library logs: {log_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
