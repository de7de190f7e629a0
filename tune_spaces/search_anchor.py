"""Ray Tune sweep over EndPrompt's anchor offset/mode, terminal-prompt length and interpolation scale.

Each trial fine-tunes and evaluates RULER through the same pipeline as pipelines/extend.py and logs one MLflow run.
Standalone it starts a local Ray; under `ray job submit` it attaches to the cluster.

examples:
  python tune_spaces/search_anchor.py                                   # tiny CPU sweep, 2 trials
  python tune_spaces/search_anchor.py --space tune_spaces/anchor_space_llama3.yaml
  python tune_spaces/search_anchor.py --set train.max_steps=2           # extra fixed override for every trial
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from endprompt_ray.config import ConfigError, load_config
from endprompt_ray.pipeline import connect_ray, quiet_logs
from endprompt_ray.sweep import load_sweep, run_sweep, summarise

DEFAULT_SPACE = Path(__file__).resolve().parent / "anchor_space.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(DEFAULT_SPACE), help="sweep YAML (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="fixed config override applied to every trial (repeatable)")
    args = parser.parse_args(argv)
    try:
        spec = load_sweep(args.space, args.overrides)
    except ConfigError as err:
        print(f"sweep error: {err}", file=sys.stderr)
        return 2
    quiet_logs()
    connect_ray()
    base = load_config(spec.base_config, spec.overrides)
    results = run_sweep(spec, base.storage_path)
    table, csv_path = summarise(spec, results, Path(base.run.output_dir) / "sweeps")
    print(f"\nsweep '{spec.name}': {len(results)} trials, best first by {spec.metric} ({spec.mode})\n{table}")
    print(f"\nresults: {csv_path} (plot beside it)\nMLflow: {base.tracking_uri} (one run per trial, tag endprompt.sweep={spec.name})")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
