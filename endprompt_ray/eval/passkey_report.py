"""Aggregate retrieval-probe records by length and depth, write predictions + summary + heatmap, log to MLflow."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from endprompt_ray.eval.io import write_jsonl
from endprompt_ray.plotting import pyplot

EARLY_LATE_SPLIT = 0.5  # early: needle in the first half of the filler (depth < 0.5); late: the rest


@dataclass
class PasskeyResult:
    probe: str  # "passkey" or "report_code"
    accuracy: dict[int, dict[float, float]]  # length -> depth -> accuracy (0-100)
    by_length: dict[int, float]  # length -> accuracy over all its depths
    overall: float  # mean of the per-length accuracies
    early_by_length: dict[int, float]  # length -> accuracy over depths < 0.5
    late_by_length: dict[int, float]  # length -> accuracy over depths >= 0.5
    early: float | None  # mean of early_by_length; None when no depth < 0.5 ran
    late: float | None
    samples: int  # scored samples, all lengths and depths
    min_fill: float  # smallest (prompt + generated tokens) / length over the samples
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def keyed(d: Mapping) -> dict:
            return {str(k): keyed(v) if isinstance(v, Mapping) else v for k, v in d.items()}

        return {"probe": self.probe, "accuracy": keyed(self.accuracy), "by_length": keyed(self.by_length),
                "overall": self.overall, "early_by_length": keyed(self.early_by_length),
                "late_by_length": keyed(self.late_by_length), "early": self.early, "late": self.late,
                "samples": self.samples, "min_fill": self.min_fill,
                "files": {k: str(v) for k, v in self.files.items()}}


def _percent(scores: Sequence[int]) -> float:
    return round(100 * float(np.mean(scores)), 2)


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 2) if values else None


def aggregate(records: Sequence[dict], probe: str) -> PasskeyResult:
    """Accuracy per length x depth from per-sample records (`length`, `depth`, `score` 0/1, `fill`)."""
    lengths = sorted({r["length"] for r in records})
    depths = sorted({r["depth"] for r in records})
    cells = {(n, d): [r["score"] for r in records if r["length"] == n and r["depth"] == d]
             for n in lengths for d in depths}
    accuracy = {n: {d: _percent(cells[n, d]) for d in depths if cells[n, d]} for n in lengths}
    by_length = {n: _percent([r["score"] for r in records if r["length"] == n]) for n in lengths}

    def split(early: bool) -> dict[int, float]:
        out = {}
        for n in lengths:
            scores = [r["score"] for r in records if r["length"] == n and (r["depth"] < EARLY_LATE_SPLIT) == early]
            if scores:
                out[n] = _percent(scores)
        return out

    early, late = split(True), split(False)
    return PasskeyResult(probe, accuracy, by_length, round(float(np.mean(list(by_length.values()))), 2), early, late,
                         _mean(list(early.values())), _mean(list(late.values())), len(records),
                         min((r["fill"] for r in records), default=0.0))


def depth_heatmap(accuracy: Mapping[int, Mapping[float, float]], path: str | Path, title: str) -> Path:
    """Accuracy (%) with one row per depth and one column per length."""
    plt = pyplot()
    lengths = sorted(accuracy)
    depths = sorted({d for by_depth in accuracy.values() for d in by_depth})
    grid = np.array([[accuracy[n].get(d, np.nan) for n in lengths] for d in depths], dtype=float).reshape(
        len(depths), len(lengths))
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 0.5 * len(depths) + 2.5))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth in filler")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="retrieved (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_outputs(result: PasskeyResult, records: Sequence[dict], output_dir: str | Path,
                  settings: dict) -> PasskeyResult:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"predictions": out / "predictions.jsonl", "summary_json": out / "summary.json",
             "heatmap": out / f"{result.probe}_heatmap.png"}
    write_jsonl(files["predictions"], records)
    depth_heatmap(result.accuracy, files["heatmap"], f"{result.probe}: keys retrieved (%)")
    result.files = files
    files["summary_json"].write_text(json.dumps({**result.to_dict(), "settings": settings}, indent=2))
    return result


def format_passkey(result: PasskeyResult) -> str:
    lengths = sorted(result.by_length)
    depths = sorted({d for by_depth in result.accuracy.values() for d in by_depth})

    def row(label: str, values: Mapping[int, float]) -> str:
        return f"{label:<14}" + "".join(f"{values[n]:>10.2f}" if n in values else f"{'-':>10}" for n in lengths)

    lines = [f"{result.probe:<14}" + "".join(f"{n:>10}" for n in lengths)]
    lines += [row(f"depth {100 * d:g}%", {n: result.accuracy[n][d] for n in lengths if d in result.accuracy[n]})
              for d in depths]
    lines.append(row("all depths", result.by_length))
    if result.late_by_length:  # a split only says something when both halves ran
        lines += [row("early (<50%)", result.early_by_length), row("late (>=50%)", result.late_by_length)]
    lines.append(f"overall {result.overall:.2f} over {result.samples} samples (min fill {result.min_fill:.1%})")
    return "\n".join(lines)


def log_passkey_to_mlflow(result: PasskeyResult, artifact_path: str | None = None) -> None:
    """Metrics <probe>/acc/<length>, <probe>/acc/<length>/depth_<pct>, <probe>/avg, <probe>/early|late and the files
    into the active run. ("@" is not allowed in MLflow metric names, hence acc/<length>.)"""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_passkey_to_mlflow needs an active MLflow run: call it inside "
                           "`with mlflow.start_run():`")
    p = result.probe
    metrics = {f"{p}/acc/{n}": s for n, s in result.by_length.items()}
    metrics.update({f"{p}/acc/{n}/depth_{100 * d:g}": s for n, v in result.accuracy.items() for d, s in v.items()})
    metrics[f"{p}/avg"] = result.overall
    metrics.update({f"{p}/{name}": value for name, value in (("early", result.early), ("late", result.late))
                    if value is not None})
    mlflow.log_metrics(metrics)
    for path in result.files.values():
        if Path(path).exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path or p)
