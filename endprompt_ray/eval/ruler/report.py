"""Score predictions, aggregate per task/length, write predictions + summary + figures, log them to MLflow."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from endprompt_ray.eval.io import write_jsonl
from endprompt_ray.eval.ruler import plots
from endprompt_ray.eval.ruler.metrics import SAMPLE_METRICS, postprocess_pred, task_score
from endprompt_ray.eval.ruler.samples import MIN_FILL, Sample
from endprompt_ray.eval.ruler.tasks import ALL_TASKS, get_task


@dataclass
class RulerResult:
    scores: dict[str, dict[int, float]]  # task -> length -> score (0-100)
    averages: dict[int, float]  # length -> mean over the tasks scored at that length
    overall: float  # mean of the per-length averages
    covered_tasks: list[str]  # tasks with at least one score
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it (or some of its lengths) did not run
    files: dict[str, Path] = field(default_factory=dict)
    coverage: dict[int, list[str]] = field(default_factory=dict)  # length -> tasks its average covers
    notes: list[str] = field(default_factory=list)
    # task -> length -> counts, where some sample's first random draw did not fit: requested, built, redrawn
    # (samples), redraws (extra draws), dropped (indices of samples with no fitting draw)
    draws: dict[str, dict[int, dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"scores": {t: {str(n): s for n, s in v.items()} for t, v in self.scores.items()},
                "averages": {str(n): s for n, s in self.averages.items()}, "overall": self.overall,
                "covered_tasks": self.covered_tasks, "coverage": {str(n): v for n, v in self.coverage.items()},
                "skipped": self.skipped, "notes": self.notes,
                "draws": {t: {str(n): c for n, c in v.items()} for t, v in self.draws.items()},
                "files": {k: str(v) for k, v in self.files.items()}}


def score_samples(samples: Sequence[Sample], raw_predictions: Sequence[str]) -> tuple[float, list[dict]]:
    """The task score (the reference metric: the mean per-sample score, as in METRICS) and one record per sample."""
    sample_metric = SAMPLE_METRICS[get_task(samples[0].task).metric]
    records = []
    for s, raw in zip(samples, raw_predictions):
        pred = postprocess_pred(raw)
        records.append({"task": s.task, "length": s.length, "index": s.index, "prompt_tokens": s.prompt_tokens,
                        "tokens_to_generate": s.tokens_to_generate, "fill": round(s.fill, 4), "answers": s.answers,
                        "pred": pred, "raw_pred": raw, "score": sample_metric(pred, s.answers), "depths": s.depths,
                        "draw": s.draw, "prompt_tail": s.prompt[-300:]})
    return task_score([r["score"] for r in records]), records


def aggregate(task_scores: dict[tuple[str, int], float], skipped: dict[str, str], notes: list[str],
              draws: dict[tuple[str, int], dict] | None = None) -> RulerResult:
    order = {t: i for i, t in enumerate(ALL_TASKS)}
    scores: dict[str, dict[int, float]] = {}
    for (task, length), score in sorted(task_scores.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        scores.setdefault(task, {})[length] = score
    lengths = sorted({length for _, length in task_scores})
    coverage = {n: [t for t in scores if n in scores[t]] for n in lengths}
    averages = {n: round(float(np.mean([scores[t][n] for t in coverage[n]])), 2) for n in lengths}
    overall = round(float(np.mean(list(averages.values()))), 2) if averages else float("nan")
    notes = list(notes)
    if len({tuple(v) for v in coverage.values()}) > 1:
        notes.append("per-length averages cover different tasks: "
                     + "; ".join(f"{n}: {', '.join(v)}" for n, v in coverage.items()))
    by_task: dict[str, dict[int, dict]] = {}
    for (task, length), counts in sorted((draws or {}).items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        by_task.setdefault(task, {})[length] = dict(counts)
    return RulerResult(scores, averages, overall, list(scores), dict(skipped), {}, coverage, notes, by_task)


def needle_hits(records: Sequence[dict]) -> list[tuple[int, float, bool]]:
    """(length, depth, retrieved) per asked-for needle, for the heatmap."""
    out = []
    for r in records:
        if r["task"].startswith("niah_"):
            for value, depth in r["depths"].items():
                if value in r["answers"] and depth >= 0:
                    out.append((r["length"], depth, value.lower() in r["pred"].lower()))
    return out


def fill_note(records: Sequence[dict]) -> list[str]:
    under = [r for r in records if r["fill"] < MIN_FILL]
    if not under:
        return []
    tasks = sorted({r["task"] for r in under})
    return [f"{len(under)} of {len(records)} prompts fill less than {MIN_FILL:.0%} of their length (whole documents "
            f"or distractor needles cannot be cut): {', '.join(tasks)}"]


def write_outputs(result: RulerResult, records: Sequence[dict], output_dir: str | Path, settings: dict) -> RulerResult:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"predictions": out / "predictions.jsonl", "summary_csv": out / "summary.csv",
             "summary_json": out / "summary.json", "niah_heatmap": out / "niah_heatmap.png",
             "ruler_scores": out / "ruler_scores.png"}
    write_jsonl(files["predictions"], records)
    lengths = sorted(result.averages)
    with open(files["summary_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", *lengths, "average"])
        for task, by_length in result.scores.items():
            mean = round(float(np.mean(list(by_length.values()))), 2)
            w.writerow([task, *[by_length.get(n, "") for n in lengths], mean])
        w.writerow(["average", *[result.averages[n] for n in lengths], result.overall])
    plots.niah_heatmap(needle_hits(records), lengths, files["niah_heatmap"])
    plots.score_curves(result.scores, result.averages, lengths, files["ruler_scores"])
    result.files = files
    files["summary_json"].write_text(json.dumps({**result.to_dict(), "settings": settings}, indent=2))
    return result


def format_table(result: RulerResult) -> str:
    lengths = sorted(result.averages)
    width = max([len("average")] + [len(t) for t in result.scores])
    lines = [f"{'task':<{width}}" + "".join(f"{n:>10}" for n in lengths)]
    for task, by_length in result.scores.items():
        lines.append(f"{task:<{width}}" + "".join(f"{by_length[n]:>10.2f}" if n in by_length else f"{'-':>10}"
                                                   for n in lengths))
    lines.append(f"{'average':<{width}}" + "".join(f"{result.averages[n]:>10.2f}" for n in lengths))
    lines.append(f"overall {result.overall:.2f} over {len(result.covered_tasks)} task(s): "
                 f"{', '.join(result.covered_tasks)}")
    lines += [f"skipped {task}: {reason}" for task, reason in result.skipped.items()]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def log_ruler_to_mlflow(result: RulerResult, artifact_path: str = "ruler") -> None:
    """Metrics ruler/<task>/<length>, ruler/avg/<length>, ruler/avg and the summary files, into the active run."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_ruler_to_mlflow needs an active MLflow run: call it inside `with mlflow.start_run():`")
    metrics = {f"ruler/{task}/{n}": s for task, v in result.scores.items() for n, s in v.items()}
    metrics.update({f"ruler/avg/{n}": s for n, s in result.averages.items()})
    for task, by_length in result.draws.items():  # only pairs where a first draw did not fit
        for n, c in by_length.items():
            metrics.update({f"ruler/redraws/{task}/{n}": c["redraws"], f"ruler/dropped/{task}/{n}": len(c["dropped"])})
    metrics["ruler/avg"] = result.overall
    mlflow.log_metrics(metrics)
    mlflow.set_tag("ruler.covered_tasks", ",".join(result.covered_tasks))
    if result.skipped:
        mlflow.set_tag("ruler.skipped", "; ".join(f"{t}: {r}" for t, r in result.skipped.items())[:4900])
    for name, path in result.files.items():
        if Path(path).exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
