"""Training cost: EndPrompt at P against plain short training at P and full-length training at L = 8P, through the
project's own trainer (run_extend: Ray Data -> Ray Train V2 workers -> DeepSpeed, evaluation off).

    python benchmarks/train_cost.py [--hidden 256] [--layers 4] [--steps 10] [--physical-length 256]
                                    [--output train_cost.json] [--set train.use_gpu=true ...]

Every method trains the same model (the locally built `tiny` Llama at the chosen size, original window P) with the
same batch size, on the default 2 CPU workers (or whatever --set says). Figures per method:
  seconds per step  median of the step_time_s reported to MLflow, after the warm-up steps
  tokens/s          median of the reported tokens_per_s over the same steps
  peak memory       GPU: torch.cuda.max_memory_allocated during the steps; CPU: the peak RSS of a training worker
                    minus its RSS right before the first step (peak_memory_delta_mb), so the Ray worker's own
                    footprint does not hide the difference
Prints one JSON object with the ratios and a pass/fail line per target; --output also writes it, and a Markdown
table beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from endprompt_ray.config.loader import load_config
from endprompt_ray.errors import ConfigError  # noqa: E402

METHODS = ("endprompt", "contiguous", "full_length")
EXTENSION = 8  # L = 8P


def model_overrides(hidden: int, layers: int, window: int) -> list[str]:
    """The tiny Llama at `hidden` x `layers`, shaped like Llama (heads up to 64 wide, 2 query heads per KV head,
    MLP ~8/3 of hidden), with `window` as its original context."""
    heads = max(hidden // 64, 1)
    return ["model.name_or_path=tiny", f"model.tiny.hidden_size={hidden}", f"model.tiny.num_hidden_layers={layers}",
            f"model.tiny.intermediate_size={-(-hidden * 8 // 3 // 32) * 32}",
            f"model.tiny.num_attention_heads={heads}", f"model.tiny.num_key_value_heads={max(heads // 2, 1)}",
            f"model.tiny.max_position_embeddings={window}"]


def method_config(kind: str, args: argparse.Namespace, workdir: Path):
    P = args.physical_length
    return load_config(None, [
        f"run.output_dir={workdir}", f"run.name=cost-{kind}", "eval.enabled=false",
        *model_overrides(args.hidden, args.layers, P),
        f"method.kind={kind}", f"method.physical_length={P}", f"method.target_length={EXTENSION * P}",
        f"train.micro_batch_size={args.micro_batch_size}", f"train.max_steps={args.steps}",
        "train.report_every=1",  # per-step figures (the step times exclude the report itself)
        f"train.checkpoint_every={args.steps}",  # one checkpoint, after the last step
        *args.overrides])


def after_warmup(history, warmup: int) -> list[float]:
    """Values of an MLflow metric history from the steps after the first `warmup`, in step order."""
    return [m.value for m in sorted(history, key=lambda m: m.step) if m.step > warmup]


def measure(kind: str, args: argparse.Namespace, workdir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from endprompt_ray.jobs.extend import run_extend

    cfg = method_config(kind, args, workdir)
    result = run_extend(cfg)
    client = MlflowClient(result.tracking_uri)
    step_times = after_warmup(client.get_metric_history(result.mlflow_run_id, "train/step_time_s"), args.warmup)
    rates = after_warmup(client.get_metric_history(result.mlflow_run_id, "train/tokens_per_s"), args.warmup)
    if not step_times:
        raise RuntimeError(f"{kind}: no steps after the {args.warmup} warm-up steps; raise --steps")
    final = result.final_metrics  # the last step's: its peaks cover every step
    memory_key = "peak_memory_mb" if cfg.train.use_gpu else "peak_memory_delta_mb"
    if memory_key not in final:
        raise RuntimeError(f"{kind}: the trainer reported no {memory_key}; final metrics: {sorted(final)}")
    return {"sequence_length": EXTENSION * args.physical_length if kind == "full_length" else args.physical_length,
            "seconds_per_step": round(statistics.median(step_times), 4),
            "tokens_per_s": round(statistics.median(rates)),
            "peak_memory_mb": round(final[memory_key], 1), "memory_measure": memory_key,
            "absolute_peak_mb": round(final["peak_memory_mb"], 1),
            "measured_steps": len(step_times), "final_loss": round(final["loss"], 4)}


def compare(results: dict) -> tuple[dict, list[dict]]:
    """The ratios, and each target with its measured value and whether it is met."""
    ep, contiguous, full = results["endprompt"], results["contiguous"], results["full_length"]
    overhead = ep["seconds_per_step"] / contiguous["seconds_per_step"] - 1
    time_ratio = full["seconds_per_step"] / ep["seconds_per_step"]
    memory_ratio = full["peak_memory_mb"] / ep["peak_memory_mb"] if ep["peak_memory_mb"] > 0 else float("inf")
    ratios = {"endprompt_time_overhead_vs_contiguous": round(overhead, 4),
              "full_length_over_endprompt_time": round(time_ratio, 2),
              "full_length_over_endprompt_memory": round(memory_ratio, 2)}
    targets = [
        {"target": "EndPrompt step-time overhead vs contiguous <= 3%", "value": ratios[
            "endprompt_time_overhead_vs_contiguous"], "met": overhead <= 0.03},
        {"target": f"full-length / EndPrompt step time >= {EXTENSION}x", "value": ratios[
            "full_length_over_endprompt_time"], "met": time_ratio >= EXTENSION},
        {"target": "full-length / EndPrompt peak memory >= 4x", "value": ratios[
            "full_length_over_endprompt_memory"], "met": memory_ratio >= 4},
    ]
    return ratios, targets


def markdown(report: dict) -> str:
    rows = ["| method | tokens per sample | s/step | tokens/s | peak memory (MB) |", "|---|---|---|---|---|"]
    rows += [f"| {kind} | {r['sequence_length']} | {r['seconds_per_step']} | {r['tokens_per_s']} | "
             f"{r['peak_memory_mb']} |" for kind, r in report["methods"].items()]
    rows += ["", "| target | measured | met |", "|---|---|---|"]
    rows += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |" for t in report["targets"]]
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256, help="model hidden size (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="model layers (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per method (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the medians (default 3)")
    parser.add_argument("--physical-length", type=int, default=256, help="P; full-length trains at 8P (default 256)")
    parser.add_argument("--micro-batch-size", type=int, default=2, help="samples per worker and step (default 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every method, e.g. train.use_gpu=true (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep runs, checkpoints and MLflow here (default: a temp dir)")
    parser.add_argument("--output", type=Path, help="also write the JSON here, and a Markdown table beside it")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves nothing after --warmup {args.warmup}")
    if args.hidden % 32:
        parser.error(f"--hidden {args.hidden} must be a multiple of 32")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict:
    results = {kind: measure(kind, args, workdir) for kind in METHODS}
    ratios, targets = compare(results)
    return {"benchmark": "train_cost", "model": {"hidden": args.hidden, "layers": args.layers},
            "micro_batch_size": args.micro_batch_size,
            "physical_length": args.physical_length, "target_length": EXTENSION * args.physical_length,
            "steps": args.steps, "warmup_steps": args.warmup, "overrides": args.overrides,
            "cpu_count": os.cpu_count(), "methods": results, "ratios": ratios, "targets": targets}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        method_config("endprompt", args, Path(tempfile.gettempdir()))  # a bad --set fails here, before any training
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="train_cost-") as tmp:
            report = run(args, Path(tmp))
    text = json.dumps(report, indent=2)
    print(text)
    for t in report["targets"]:
        print(f"{'PASS' if t['met'] else 'FAIL'}  {t['target']}: {t['value']}", file=sys.stderr)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
        args.output.with_suffix(".md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    from endprompt_ray.jobs.extend import quiet_logs

    quiet_logs()  # the console keeps the progress bars and the JSON; Ray's processes log to Ray's log files
    main()
