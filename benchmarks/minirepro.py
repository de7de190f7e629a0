"""The paper's comparison in miniature, on the product's own code path (run_extend: Ray Data -> Ray Train +
DeepSpeed -> export -> passkey + perplexity -> MLflow), starting from the toy base (window 256, extended to 2048).

Arms: rope-only, contiguous short fine-tuning, EndPrompt (template or tail prompt x fixed or random anchor), PoSE,
and full-length fine-tuning at L; `base` (the untouched model) on request. Every trained arm gets the same number of
steps (equal steps); full-length also runs at steps x P / L, the training tokens of one short arm (equal compute up
to attention's quadratic term; the measured training seconds stand next to every row). Arms with random draws
(random anchors, PoSE) run with several seeds (mean and range).

    python benchmarks/minirepro.py                   # the smallest scale, about 30 minutes on 2 cores
    python benchmarks/minirepro.py --steps 20 --seeds 1 --arms rope_only,endprompt_template_fixed   # smoke
    python benchmarks/minirepro.py --corpus passkey-control --arms endprompt_tail_random --steps 600   # control

`--corpus passkey-control` fine-tunes on the passkey probe's own format, laid out so that EndPrompt's tail prompt
(the question and its answer) retrieves from segment 1 across the position jump: an in-distribution control of what
the trainer learns when the data teaches the task (benchmarks/README.md), never evidence of an extended context.

Writes minirepro.json, minirepro.md, minirepro_length.png and minirepro_compute.png under --output, and one
MLflow parent run with a child run per arm and seed. Other models start from a config file (`--config`), e.g. the
real-model benchmark in benchmarks/README.md (SmolLM2-135M); at GPU scale pass the real settings with --set, e.g.
--set model.name_or_path=meta-llama/Meta-Llama-3-8B --set method.physical_length=8192
--set method.target_length=65536 --set train.use_gpu=true --set train.deepspeed_config=zero3.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = {  # name -> config overrides
    "base": ["method.kind=rope_only", "rope.type=none"],  # the untouched model, scored at every length
    "rope_only": ["method.kind=rope_only"],
    "contiguous": ["method.kind=contiguous"],
    "endprompt_template_fixed": ["method.kind=endprompt", "method.prompt_source=template", "method.anchor=fixed"],
    "endprompt_template_random": ["method.kind=endprompt", "method.prompt_source=template", "method.anchor=random"],
    "endprompt_tail_fixed": ["method.kind=endprompt", "method.prompt_source=tail", "method.anchor=fixed"],
    "endprompt_tail_random": ["method.kind=endprompt", "method.prompt_source=tail", "method.anchor=random"],
    "pose": ["method.kind=pose"],
    "full_length": ["method.kind=full_length"],
}
# Seeds vary the random draws (anchors, PoSE skips); the corpus and its order are fixed, so arms without draws
# would repeat one run exactly and get one seed. Full-length is also too costly to repeat at this scale.
SINGLE_SEED = {"base", "rope_only", "contiguous", "endprompt_template_fixed", "endprompt_tail_fixed", "full_length"}


@dataclass(frozen=True)
class Run:
    arm: str
    label: str  # the table row
    seed: int
    steps: int


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="a config file every arm starts from (default: the built-in defaults)")
    p.add_argument("--steps", type=int, default=150, help="training steps of every trained arm (default 150)")
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds per arm with random draws: random anchors, PoSE (default 3)")
    p.add_argument("--arms", default=",".join(a for a in ARMS if a != "base"),
                   help="comma-separated arms (default: all but base): " + ", ".join(ARMS))
    p.add_argument("--passkey-samples", type=int, default=4, help="passkey samples per length and depth (default 4)")
    p.add_argument("--output", type=Path, default=Path("outputs/minirepro"), help="output folder")
    p.add_argument("--corpus", choices=("config", "passkey-control"), default="config",
                   help="config: the config's data (default: the demo corpus); passkey-control: passkey prompts of "
                        "L tokens with the needle inside the first P - b and the answer at the end, one epoch's worth, "
                        "written under --output (fine-tuning on the evaluation's own format: an in-distribution "
                        "control of what the trainer learns when the data teaches the task)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every arm (repeatable)")
    return p.parse_args(argv)


def plan(args, P: int, L: int) -> list[Run]:
    runs = []
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if arm not in ARMS:
            raise SystemExit(f"error: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        steps = 0 if arm in ("base", "rope_only") else args.steps
        for seed in [0] if arm in SINGLE_SEED else range(args.seeds):
            runs.append(Run(arm, arm, seed, steps))
        if arm == "full_length":
            runs.append(Run(arm, "full_length_equal_tokens", 0, max(1, round(args.steps * P / L))))
    return runs


def control_corpus(args, cfg) -> list[str]:
    """Write the passkey-control corpus for `cfg` under --output; the override that trains on it."""
    from endprompt_ray.corpora.passkey import passkey_documents
    from endprompt_ray.data.dataset import bos_prefix
    from endprompt_ray.models.loading import load_tokenizer

    m, tokenizer = cfg.method, load_tokenizer(cfg.model.name_or_path)
    head = m.physical_length - m.tail_length - len(bos_prefix(tokenizer))  # what segment 1 keeps of a document
    docs = passkey_documents(tokenizer, args.steps * cfg.global_batch, m.target_length, head, seed=cfg.run.seed)
    path = args.output.resolve() / "passkey_control.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return [f"data.paths=[{path}]"]


def base_overrides(args, run: Run) -> list[str]:
    return [f"run.output_dir={args.output.resolve()}", f"run.name=minirepro-{run.label}-s{run.seed}",
            f"run.seed={run.seed}", f"train.max_steps={run.steps}", f"train.checkpoint_every={max(run.steps, 1)}",
            "eval.suites=[passkey,ppl]", "eval.compare=false", f"eval.passkey_samples={args.passkey_samples}",
            *args.overrides, *ARMS[run.arm]]


def run_one(run: Run, args, parent_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    from endprompt_ray.config.loader import load_config
    from endprompt_ray.jobs.extend import run_extend

    cfg = load_config(args.config, base_overrides(args, run))
    started = time.perf_counter()
    result = run_extend(cfg, mlflow_tags={"mlflow.parentRunId": parent_id, "endprompt.minirepro": run.label})
    history = sorted(MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id, "train/step_time_s"),
                     key=lambda m: m.step)
    report = result.evaluation
    (scores,) = [s for v, s in report.scores.items() if v in ("trained", "rope_only")]
    return {"arm": run.arm, "label": run.label, "seed": run.seed, "steps": run.steps,
            "train_seconds": round(training_seconds(history), 2),
            "wall_seconds": round(time.perf_counter() - started, 1), "run_id": result.mlflow_run_id,
            **{suite: {int(n): v for n, v in by.items()} for suite, by in scores.items()}}


def training_seconds(step_times) -> float:
    """Seconds spent in training steps: each report's step_time_s is a mean over the steps since the last one."""
    done, total = 0, 0.0
    for metric in step_times:
        total += metric.value * (metric.step - done)
        done = metric.step
    return total


def summarise(records: list[dict], lengths: list[int]) -> list[dict]:
    """One row per label: mean and range over seeds of every score."""
    rows = []
    for label in dict.fromkeys(r["label"] for r in records):
        group = [r for r in records if r["label"] == label]
        row = {"label": label, "seeds": len(group), "steps": group[0]["steps"],
               "train_seconds": statistics.mean(r["train_seconds"] for r in group)}
        for suite in ("passkey", "passkey_early", "passkey_late", "ppl"):
            for n in lengths:
                values = [r[suite][n] for r in group if n in r.get(suite, {})]
                if values:
                    row[f"{suite}@{n}"] = (statistics.mean(values), min(values), max(values))
        rows.append(row)
    return rows


def markdown(rows: list[dict], lengths: list[int]) -> str:
    def cell(value, digits) -> str:
        if value is None:
            return "-"
        mean, low, high = value
        return f"{mean:.{digits}f}" + (f" ({low:.{digits}f}-{high:.{digits}f})" if high > low else "")

    L = max(lengths)
    head = (["arm", "seeds", "steps", "train s"] + [f"passkey @{n}" for n in lengths]
            + [f"early @{L}", f"late @{L}"] + [f"PPL @{n}" for n in lengths])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], str(r["seeds"]), str(r["steps"]), f"{r['train_seconds']:.0f}"]
        cells += [cell(r.get(f"passkey@{n}"), 0) for n in lengths]
        cells += [cell(r.get(f"passkey_early@{L}"), 0), cell(r.get(f"passkey_late@{L}"), 0)]
        cells += [cell(r.get(f"ppl@{n}"), 2) for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], lengths: list[int], out: Path) -> list[Path]:
    from endprompt_ray.plotting import pyplot

    plt, L = pyplot(), max(lengths)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        points = [(n, r[f"passkey@{n}"]) for n in lengths if f"passkey@{n}" in r]
        ax.errorbar([n for n, _ in points], [v[0] for _, v in points],
                    yerr=[[v[0] - v[1] for _, v in points], [v[2] - v[0] for _, v in points]],
                    marker="o", capsize=3, label=r["label"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set(xlabel="context length (tokens)", ylabel="passkey accuracy (%)", ylim=(-5, 105),
           title="passkey accuracy by length (mean, seed range)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    by_length = out / "minirepro_length.png"
    fig.savefig(by_length, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if f"passkey@{L}" in r:
            ax.scatter(r["train_seconds"], r[f"passkey@{L}"][0], s=40)
            ax.annotate(r["label"], (r["train_seconds"], r[f"passkey@{L}"][0]), fontsize=7)
    ax.set(xlabel="training seconds (measured, this machine)", ylabel=f"passkey accuracy @ {L} (%)",
           ylim=(-5, 105), title="accuracy vs compute")
    fig.tight_layout()
    by_compute = out / "minirepro_compute.png"
    fig.savefig(by_compute, dpi=120)
    plt.close(fig)
    return [by_length, by_compute]


def main(argv=None) -> int:
    args = parse_args(argv)
    from mlflow.tracking import MlflowClient

    from endprompt_ray.config.loader import load_config
    from endprompt_ray.eval.compare import eval_lengths
    from endprompt_ray.jobs.extend import quiet_logs
    from endprompt_ray.runtime.tracking import experiment_id

    args.output.mkdir(parents=True, exist_ok=True)
    quiet_logs(args.output / "minirepro.log")
    base = load_config(args.config, [f"run.output_dir={args.output.resolve()}", *args.overrides])
    if args.corpus == "passkey-control":
        args.overrides = [*control_corpus(args, base), *args.overrides]
    P, L = base.method.physical_length, base.method.target_length
    lengths = eval_lengths(base)
    client = MlflowClient(base.tracking_uri)
    parent = client.create_run(experiment_id(client, base.tracking.experiment), run_name="minirepro",
                               tags={"endprompt.benchmark": "minirepro", "endprompt.corpus": args.corpus})
    records = []
    try:
        for run in plan(args, P, L):
            print(f"== {run.label} seed {run.seed}: {run.steps} steps", flush=True)
            records.append(run_one(run, args, parent.info.run_id))
        rows = summarise(records, lengths)
        table = markdown(rows, lengths)
        files = plot(rows, lengths, args.output)
        result = {"P": P, "L": L, "lengths": lengths, "steps": args.steps, "seeds": args.seeds, "corpus": args.corpus,
                  "records": records, "rows": rows}
        (args.output / "minirepro.json").write_text(json.dumps(result, indent=2))
        (args.output / "minirepro.md").write_text(table + "\n")
        for path in [args.output / "minirepro.json", args.output / "minirepro.md", *files]:
            client.log_artifact(parent.info.run_id, str(path))
        client.set_terminated(parent.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(parent.info.run_id, "FAILED")
        raise
    print(table)
    print(f"\nfiles under {args.output.resolve()}; MLflow parent run {parent.info.run_id} at {base.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
