"""Extend a RoPE model's context window with EndPrompt: data -> Ray Train + DeepSpeed -> export -> RULER -> MLflow.

Standalone it starts a local Ray; under `ray job submit` (or with RAY_ADDRESS set) it attaches to the cluster.
With no arguments it runs the CPU default: tiny local model, generated demo corpus, 2 workers, DeepSpeed ZeRO-2.

examples:
  python pipelines/extend.py
  python pipelines/extend.py --config configs/llama3-8b-64k.yaml --set run.name=llama3-64k-a
  python pipelines/extend.py --set method.anchor=random --set train.deepspeed_config=configs/deepspeed/zero3.json
  ray job submit --working-dir . -- python pipelines/extend.py --config configs/llama3-8b-64k.yaml
"""

from __future__ import annotations

import argparse
import sys

from endprompt_ray.config.loader import dump_yaml, load_config
from endprompt_ray.errors import ConfigError
from endprompt_ray.jobs.extend import format_summary, quiet_logs, run_extend
from endprompt_ray.runtime.ray_session import ray_logs_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset (see configs/); omitted: the built-in CPU default")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set method.target_length=65536 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    log_file = cfg.run_dir / "job.log"
    quiet_logs(log_file)
    try:
        result = run_extend(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print(f"  library logs: {log_file}; Ray process logs: {ray_logs_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
