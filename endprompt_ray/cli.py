"""The `endprompt` command: one subcommand per job.

    endprompt extend --config llama3-8b-64k --set run.name=llama3-64k-a
    endprompt evaluate --model outputs/endprompt-tiny/model --suites passkey,ppl
    endprompt sweep --space anchor_space
    endprompt search-rope --set mode=longrope2
    endprompt build-toy-base
    endprompt plan --config llama3-8b-64k

Each subcommand is a `main(argv) -> int` named by "module:function" and imported only when it runs, so that
`endprompt --help` (and a typo) answers at once instead of importing Ray, DeepSpeed and torch first.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from endprompt_ray.config.loader import dump_yaml, load_config
from endprompt_ray.config.schema import ExtendConfig, config_fields
from endprompt_ray.errors import ConfigError
from endprompt_ray.resources import DEEPSPEED, PRESET, shipped

COMMANDS = {  # name -> ("module:function", summary)
    "extend": ("endprompt_ray.cli:extend",
               "extend a model's context window: data -> Ray Train + DeepSpeed -> export -> evaluation -> MLflow"),
    "evaluate": ("endprompt_ray.jobs.evaluate:main",
                 "score a model directory on RULER, passkey, perplexity and LongBench"),
    "sweep": ("endprompt_ray.sweeps.cli:main", "Ray Tune sweep over the method's settings (anchor, prompt, scale)"),
    "search-rope": ("endprompt_ray.longrope.cli:main", "LongRoPE's evolutionary search of per-frequency RoPE factors"),
    "build-toy-base": ("endprompt_ray.jobs.toybase:main", "pretrain the toy base (window 256) the CPU default uses"),
    "plan": ("endprompt_ray.plan.cli:main", "estimate a config's memory and time before running it"),
}
EXTEND_JOB = "endprompt_ray.jobs.extend"  # imported when the job runs: it brings in Ray, DeepSpeed and torch


def config_fields_help(cls=ExtendConfig) -> str:
    """Every config field with its type, default and help, as the schema declares them."""
    lines = ["config fields (--set KEY=VALUE, or the same keys in a YAML preset's sections):"]
    for doc in config_fields(cls):
        lines.append(f"  {doc.key} ({doc.type}, default {doc.default})")
        lines.append(f"      {doc.help}")
    return "\n".join(lines)


def extend_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="endprompt extend", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Extend a RoPE model's context window with EndPrompt (or a baseline):\n"
                    "data -> Ray Train + DeepSpeed -> export -> evaluation -> MLflow.\n"
                    "Standalone it starts a local Ray; under `ray job submit` (or with RAY_ADDRESS set) it attaches\n"
                    "to the cluster. With no arguments it runs the CPU default: the toy base extended 256 -> 2048\n"
                    "on generated text, 2 workers, DeepSpeed ZeRO-2.\n\n"
                    f"shipped presets (--config NAME): {', '.join(shipped(PRESET))}\n"
                    f"shipped DeepSpeed configs (--set train.deepspeed_config=NAME): {', '.join(shipped(DEEPSPEED))}",
        epilog=config_fields_help())
    parser.add_argument("--config", metavar="PRESET_OR_YAML",
                        help="a shipped preset's name or a path to a YAML file; omitted: the built-in CPU default")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (repeatable), e.g. --set method.target_length=65536")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def extend(argv: list[str] | None = None) -> int:
    args = extend_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    job = importlib.import_module(EXTEND_JOB)
    ray_session = importlib.import_module("endprompt_ray.runtime.ray_session")
    log_file = cfg.run_dir / "job.log"
    job.quiet_logs(log_file)
    try:
        result = job.run_extend(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(job.format_summary(result))
    print(f"  library logs: {log_file}; Ray process logs: {ray_session.ray_logs_dir()}")
    return 0


def load_command(name: str):
    module, _, function = COMMANDS[name][0].partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as err:
        if err.name is None or not module.startswith(err.name):  # a dependency of the command is missing
            raise
        raise SystemExit(f"endprompt {name}: this installation has no {module} (reinstall endprompt-ray)") from err


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="endprompt", usage="endprompt [-h] COMMAND [ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Extend the context window of RoPE (LLaMA-family) models on Ray.",
        epilog="commands:\n" + "\n".join(f"  {name:<15} {summary}" for name, (_, summary) in COMMANDS.items())
               + "\n\n`endprompt COMMAND --help` shows a command's options (extend: every config field).")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    args = parser.parse_args(argv[:1])  # the command's arguments (its --help included) are its own to parse
    command = load_command(args.command)
    program, sys.argv[0] = sys.argv[0], f"endprompt {args.command}"  # argparse's default prog, for usage lines
    try:
        return command(argv[1:])
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    sys.exit(main())
