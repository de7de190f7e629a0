"""`endprompt plan`: per-GPU memory and step time of a configuration before launch, and what to change if it does
not fit. For EndPrompt (and every method training on P < L tokens) it also plans the full-length baseline at L."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from endprompt_ray.config.loader import load_config
from endprompt_ray.errors import ConfigError, ModelLoadError
from endprompt_ray.plan.architectures import resolve_architecture
from endprompt_ray.plan.estimate import DEFAULT_MFU, Workload
from endprompt_ray.plan.gpus import GPUS, gpu_spec
from endprompt_ray.plan.planner import format_plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="endprompt plan", description=__doc__)
    parser.add_argument("--config", required=True, help="a preset name (llama3-8b-64k) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for the job (repeatable)")
    parser.add_argument("--gpu", default="h100-80gb", help=f"GPU type: {', '.join(GPUS)}")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per node (default: train.num_workers / nodes)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--sp", type=int, default=None, help="sequence parallel degree (default: "
                                                              "train.sequence_parallel, else 1)")
    parser.add_argument("--model-config", default=None, metavar="DIR",
                        help="a directory with the model's config.json (for hub ids the planner does not know)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOPs utilisation assumed for step time")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.nodes < 1 or (args.gpus is not None and args.gpus < 1) or not 0 < args.mfu <= 1:
            raise ConfigError("--gpus and --nodes must be >= 1 and --mfu in (0, 1]")
        cfg = load_config(args.config, args.overrides)
        gpu = gpu_spec(args.gpu)
        arch = resolve_architecture(cfg.model.name_or_path, cfg.model.tiny, args.model_config)
        workload = Workload.from_config(cfg, args.gpus, args.nodes, args.sp)
        if not cfg.train.use_gpu:
            print("note: train.use_gpu is false in this config; planning it as a GPU run (bf16 unless train.bf16 "
                  "says otherwise)")
            workload = dataclasses.replace(workload, bf16=cfg.train.bf16 is not False)
        plans = [(f"{cfg.method.kind} (as configured)", workload)]
        if cfg.method.kind != "full_length":
            baseline = dataclasses.replace(workload, sequence_length=cfg.method.target_length,
                                           sequence_parallel=args.sp or 1)
            plans.append((f"full_length baseline at L = {cfg.method.target_length}", baseline))
        for title, planned in plans:
            text, _, _ = format_plan(arch, planned, gpu, title, args.mfu)
            print(text + "\n")
    except (ConfigError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
