"""The paper's comparison in miniature, on the product's own code path (run_extend: Ray Data -> Ray Train +
DeepSpeed -> export -> passkey + perplexity -> MLflow), starting from the toy base (window 256, extended to 2048).

Arms: rope-only, contiguous short fine-tuning, EndPrompt (template or tail prompt x fixed or random anchor), PoSE,
and full-length fine-tuning at L; `base` (the untouched model) on request. Every trained arm gets the same number of
steps (equal steps) except `full_length_equal_tokens`: full-length at steps x P / L, the training tokens of one
short arm. Every row carries its training FLOPs (plan.estimate's model FLOPs: 6 x parameters per token plus causal
attention, which makes full-length's FLOPs larger at equal tokens) and its measured training seconds. Arms with
random draws (random anchors, PoSE) run with several seeds (mean and range). Each arm is scored by the config's
evaluation suites (retrieval probes by length and needle depth, perplexity by length).

    python benchmarks/minirepro.py                   # the smallest scale, about 30 minutes on 2 cores
    python benchmarks/minirepro.py --steps 20 --seeds 1 --arms rope_only,endprompt_template_fixed   # smoke
    python benchmarks/minirepro.py --config tiny-heldout --steps 800 \
        --arms base,rope_only,contiguous,endprompt_tail_random,pose,full_length_equal_tokens \
        --arm-set pose:train.learning_rate=5e-4     # held-out probes; per-arm settings, e.g. swept learning rates
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
    "full_length_equal_tokens": ["method.kind=full_length"],  # at steps x P / L: the tokens of one short arm
}
# Seeds vary the random draws (anchors, PoSE skips); the corpus and its order are fixed, so arms without draws
# would repeat one run exactly and get one seed. Full-length is also too costly to repeat at this scale.
SINGLE_SEED = {"base", "rope_only", "contiguous", "endprompt_template_fixed", "endprompt_tail_fixed", "full_length",
               "full_length_equal_tokens"}
DEPTH_ROWS = ("_early", "_late")  # a probe's rows with the needle in the first / second half of the context


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
    p.add_argument("--arms", default=",".join(a for a in ARMS if a not in ("base", "full_length")),
                   help="comma-separated arms (default: all but base): " + ", ".join(ARMS))
    p.add_argument("--passkey-samples", type=int, default=None,
                   help="samples per length and depth of every retrieval probe (default: the config's)")
    p.add_argument("--output", type=Path, default=Path("outputs/minirepro"), help="output folder")
    p.add_argument("--corpus", choices=("config", "passkey-control"), default="config",
                   help="config: the config's data (default: the demo corpus); passkey-control: passkey prompts of "
                        "L tokens with the needle inside the first P - b and the answer at the end, one epoch's worth, "
                        "written under --output (fine-tuning on the evaluation's own format: an in-distribution "
                        "control of what the trainer learns when the data teaches the task)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every arm (repeatable)")
    p.add_argument("--arm-set", dest="arm_overrides", action="append", default=[], metavar="ARM:KEY=VALUE",
                   help="config override for one arm, after --set, e.g. pose:train.learning_rate=5e-4 (repeatable)")
    args = p.parse_args(argv)
    args.per_arm = {}
    for item in args.arm_overrides:
        arm, sep, override = item.partition(":")
        if not sep or "=" not in override or arm not in ARMS:
            p.error(f"--arm-set {item!r}: write ARM:KEY=VALUE with ARM one of {', '.join(ARMS)}")
        args.per_arm.setdefault(arm, []).append(override)
    return args


def plan(args, P: int, L: int) -> list[Run]:
    runs = []
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if arm not in ARMS:
            raise SystemExit(f"error: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        steps = 0 if arm in ("base", "rope_only") else args.steps
        if arm == "full_length_equal_tokens":
            steps = max(1, round(args.steps * P / L))
        for seed in [0] if arm in SINGLE_SEED else range(args.seeds):
            runs.append(Run(arm, arm, seed, steps))
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
            "eval.compare=false",
            *([f"eval.passkey_samples={args.passkey_samples}"] if args.passkey_samples else []),
            *args.overrides, *ARMS[run.arm], *args.per_arm.get(run.arm, [])]


def training_flops(cfg) -> float:
    """Model FLOPs of the run's training (plan.estimate: 6 x matmul parameters per token plus causal attention)."""
    from endprompt_ray.plan.architectures import resolve_architecture
    from endprompt_ray.plan.estimate import Workload, model_flops_per_step

    workload = Workload.from_config(cfg)
    arch = resolve_architecture(cfg.model.name_or_path, cfg.model.tiny)
    return model_flops_per_step(arch, workload) * workload.world_size * cfg.train_steps


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
            "learning_rate": cfg.train.learning_rate, "train_flops": training_flops(cfg),
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


def probes_of(records: list[dict]) -> list[str]:
    """The retrieval probes the records were scored on, in evaluation order (every score row but ppl and depths)."""
    keys = dict.fromkeys(k for r in records for k, v in r.items() if isinstance(v, dict))
    return [k for k in keys if k != "ppl" and not k.endswith(DEPTH_ROWS)]


def summarise(records: list[dict], lengths: list[int]) -> list[dict]:
    """One row per label: mean and range over seeds of every score."""
    rows = []
    suites = [k for p in probes_of(records) for k in (p, *(p + d for d in DEPTH_ROWS))] + ["ppl"]
    for label in dict.fromkeys(r["label"] for r in records):
        group = [r for r in records if r["label"] == label]
        row = {"label": label, "seeds": len(group), "steps": group[0]["steps"],
               "learning_rate": group[0].get("learning_rate"), "train_flops": group[0].get("train_flops", 0.0),
               "train_seconds": statistics.mean(r["train_seconds"] for r in group)}
        for suite in suites:
            for n in lengths:
                values = [r[suite][n] for r in group if n in r.get(suite, {})]
                if values:
                    row[f"{suite}@{n}"] = (statistics.mean(values), min(values), max(values))
        rows.append(row)
    return rows


def _cell(value, digits) -> str:
    if value is None:
        return "-"
    mean, low, high = value
    return f"{mean:.{digits}f}" + (f" ({low:.{digits}f}-{high:.{digits}f})" if high > low else "")


def _table(head: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(cells) + " |" for cells in lines])


def markdown(rows: list[dict], lengths: list[int], probes: list[str]) -> str:
    """Scores by length (retrieval %, perplexity), then retrieval at L by needle depth (first / second half)."""
    L = max(lengths)
    head = (["arm", "seeds", "steps", "lr", "train TFLOPs", "train s"]
            + [f"{p} @{n}" for p in probes for n in lengths] + [f"PPL @{n}" for n in lengths])
    by_length = _table(head, [
        [r["label"], str(r["seeds"]), str(r["steps"]), f"{r['learning_rate']:.0e}" if r["steps"] else "-",
         f"{r['train_flops'] / 1e12:.1f}", f"{r['train_seconds']:.0f}"]
        + [_cell(r.get(f"{p}@{n}"), 1) for p in probes for n in lengths]
        + [_cell(r.get(f"ppl@{n}"), 2) for n in lengths] for r in rows])
    by_depth = _table(["arm"] + [f"{p} {d[1:]} @{L}" for p in probes for d in DEPTH_ROWS],
                      [[r["label"]] + [_cell(r.get(f"{p}{d}@{L}"), 1) for p in probes for d in DEPTH_ROWS]
                       for r in rows])
    return by_length + "\n\n" + by_depth


def _errorbar(ax, xs, values, **kwargs) -> None:
    ax.errorbar(xs, [v[0] for v in values], yerr=[[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]],
                capsize=3, **kwargs)


def plot(rows: list[dict], lengths: list[int], probes: list[str], out: Path) -> list[Path]:
    """Retrieval by length per probe (one panel each), and retrieval at L against training FLOPs per arm."""
    from endprompt_ray.plotting import pyplot

    plt, L = pyplot(), max(lengths)
    fig, axes = plt.subplots(1, len(probes), figsize=(4.5 * len(probes), 4.2), squeeze=False, sharey=True)
    for ax, probe in zip(axes[0], probes):
        for r in rows:
            points = [(n, r[f"{probe}@{n}"]) for n in lengths if f"{probe}@{n}" in r]
            _errorbar(ax, [n for n, _ in points], [v for _, v in points], marker="o", label=r["label"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set(xlabel="context length (tokens)", title=f"{probe} (mean, seed range)", ylim=(-5, 105))
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    by_length = out / "minirepro_length.png"
    fig.savefig(by_length, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    trained = [r for r in rows if r["train_flops"] > 0]
    for probe, marker in zip(probes, "osD^v<>"):
        for r in trained:
            if f"{probe}@{L}" in r:
                _errorbar(ax, [r["train_flops"]], [r[f"{probe}@{L}"]], marker=marker, linestyle="none",
                          color=f"C{rows.index(r)}", label=f"{r['label']}: {probe}")
    for r in rows:
        if not r["train_flops"]:  # untrained rows: a level to beat
            best = max((r[f"{p}@{L}"][0] for p in probes if f"{p}@{L}" in r), default=None)
            if best is not None:
                ax.axhline(best, linestyle=":", color="grey", label=f"{r['label']}, untrained (its best probe)")
    ax.set_xscale("log")
    ax.set(xlabel="training FLOPs (model FLOPs, plan.estimate)", ylabel=f"accuracy @ {L} (%)", ylim=(-5, 105),
           title=f"retrieval at {L} against training compute (mean, seed range)")
    ax.legend(fontsize=6, ncol=2)
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
        rows, probes = summarise(records, lengths), probes_of(records)
        table = markdown(rows, lengths, probes)
        files = plot(rows, lengths, probes, args.output)
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
