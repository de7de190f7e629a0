"""What a sweep found: a table sorted by the metric (text and CSV), a plot of the metric against each swept
dimension, and the best trial's full config as a YAML that `endprompt extend --config` runs unchanged."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from endprompt_ray.config.loader import dump_yaml
from endprompt_ray.plotting import pyplot
from endprompt_ray.sweeps.trial import FINAL, TrialPlan

SHOWN = ("passkey/avg", "ppl/target", "loss", "probe/nll")  # beside the metric, when trials report them


@dataclass
class Row:
    trial_id: str
    params: dict
    metrics: dict
    status: str  # done | stopped at step N | FAILED: ...
    error: str = ""
    extra: dict = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        v = self.metrics.get(metric) if self.status == "done" else None
        return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def collect(results, plan: TrialPlan, unfinished: set | None = None, configs: dict | None = None) -> list[Row]:
    """One row per trial of a Tune ResultGrid, best first by the sweep's metric (trials without it last).
    `unfinished`: trials an interrupted sweep will continue; `configs`: sampled values of trials never reported."""
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        named = re.search(r"_([0-9a-f]+_\d{5})_", Path(result.path).name)  # a trial that never reported
        trial_id = metrics.get("trial_id") or (named.group(1) if named else Path(result.path).name)
        if trial_id in (unfinished or ()):
            status, error = f"interrupted at step {int(metrics.get('step', 0))}", ""
        elif result.error:
            status, error = "FAILED", _error_line(result.error)
        elif metrics.get(FINAL):
            status, error = "done", ""
            if plan.spec.metric not in metrics:
                status, error = "FAILED", f"the trial reported no {plan.spec.metric} (is that suite and length evaluated?)"
        else:
            status, error = f"stopped at step {int(metrics.get('step', 0))}", ""
        rows.append(Row(str(trial_id), dict(result.config or (configs or {}).get(trial_id) or {}), metrics, status,
                        error))
    sign = -1.0 if plan.spec.mode == "max" else 1.0
    rows.sort(key=lambda r: (r.value(plan.spec.metric) is None, sign * (r.value(plan.spec.metric) or 0.0),
                             r.trial_id))
    return rows


def _error_line(error: BaseException) -> str:
    """The root cause's message: Tune wraps a trial's exception, Ray Train wraps a worker's."""
    text = str(error).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(" ")]
    return (lines[-1] if lines else type(error).__name__)[:300]


def table(rows: list[Row], plan: TrialPlan) -> tuple[list[str], list[list[str]]]:
    metric = plan.spec.metric
    by_length = sorted({k for r in rows for k in r.metrics if re.fullmatch(r"passkey/acc/\d+", k)},
                       key=lambda k: int(k.rsplit("/", 1)[1]))
    same = {k for k in by_length if all(r.metrics.get(k) == r.metrics.get(metric) for r in rows)}  # a synonym
    shown = [m for m in by_length + list(SHOWN) if m != metric and m not in same and any(m in r.metrics for r in rows)]
    header = ["rank", "trial"] + [d.key for d in plan.dims] + [metric] + shown + ["status"]
    body = []
    for i, r in enumerate(rows, 1):
        cells = [str(i) if r.value(metric) is not None else "-", r.trial_id]
        cells += [_fmt(r.params.get(d.key)) for d in plan.dims]
        cells += [_fmt(r.value(metric))] + [_fmt(r.metrics.get(m)) for m in shown]
        cells.append(r.status if not r.error else f"{r.status}: {r.error}")
        body.append(cells)
    return header, body


def format_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)


def write(rows: list[Row], plan: TrialPlan, out_dir: Path) -> dict[str, Path]:
    """results.csv, results.txt, <metric>.png and best_config.yaml under out_dir; returns them by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, body = table(rows, plan)
    files = {"table": out_dir / "results.txt", "csv": out_dir / "results.csv"}
    files["table"].write_text(format_table(header, body) + "\n")
    keys = sorted({k for r in rows for k, v in r.metrics.items() if isinstance(v, (int, float, str))}
                  - {"config", FINAL})
    with open(files["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "status", "error"] + [f"config/{d.key}" for d in plan.dims] + keys)
        for r in rows:
            writer.writerow([r.trial_id, r.status, r.error] + [r.params.get(d.key) for d in plan.dims]
                            + [r.metrics.get(k) for k in keys])
    plot = plot_dimensions(rows, plan, out_dir / f"{plan.spec.metric.replace('/', '_')}.png")
    if plot:
        files["plot"] = plot
    best = best_row(rows, plan)
    if best is not None:
        files["best_config"] = write_best_config(best, plan, out_dir / "best_config.yaml")
    return files


def best_row(rows: list[Row], plan: TrialPlan) -> Row | None:
    return rows[0] if rows and rows[0].value(plan.spec.metric) is not None else None


def write_best_config(best: Row, plan: TrialPlan, path: Path) -> Path:
    """The winning trial's full config under a new run name, so `extend.py --config` trains it afresh instead of
    resuming the trial's checkpoint."""
    cfg = plan.config(best.params)
    cfg.run.name = f"{plan.spec.name}-best"
    swept = yaml.safe_dump(best.params, default_flow_style=True, width=float("inf")).strip()
    head = (f"# Best trial {best.trial_id} of sweep '{plan.spec.name}': {plan.spec.metric} = "
            f"{best.value(plan.spec.metric):.4g} ({plan.spec.mode} is better)\n"
            f"# swept values: {swept.replace(chr(10), chr(10) + '# ')}\n"  # every line a comment
            f"# run it: endprompt extend --config {path}\n")
    path.write_text(head + dump_yaml(cfg))
    return path


def plot_dimensions(rows: list[Row], plan: TrialPlan, path: Path) -> Path | None:
    """One panel per swept dimension: every finished trial's metric at its value, and the mean per value."""
    scored = [r for r in rows if r.value(plan.spec.metric) is not None]
    if not scored:
        return None

    plt = pyplot()
    metric = plan.spec.metric
    fig, axes = plt.subplots(1, len(plan.dims), figsize=(4.2 * len(plan.dims), 3.6), squeeze=False)
    for ax, dim in zip(axes[0], plan.dims):
        xs = [r.params.get(dim.key) for r in scored]
        ys = [r.value(metric) for r in scored]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if numeric and dim.kind not in ("grid", "choice"):
            ax.scatter(xs, ys, color="tab:blue")
            if dim.kind.endswith("loguniform") or dim.kind == "lograndint":
                ax.set_xscale("log")
        else:
            levels = list(dict.fromkeys(str(v) for v in (dim.values if dim.kind in ("grid", "choice") else xs)))
            pos = [levels.index(str(x)) for x in xs]
            ax.scatter(pos, ys, color="tab:blue", alpha=0.7, label="trials")
            means = [(i, sum(y for p, y in zip(pos, ys) if p == i) / pos.count(i)) for i in range(len(levels))
                     if i in pos]
            ax.plot([m[0] for m in means], [m[1] for m in means], "_", color="tab:red", markersize=28,
                    markeredgewidth=2, label="mean")
            ax.set_xticks(range(len(levels)), [lv.replace(",", ",\n") for lv in levels], fontsize=7)
            ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_xlabel(dim.key, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
    if any(d.kind in ("grid", "choice") for d in plan.dims):
        axes[0][0].legend(fontsize=7, loc="best")
    trials = f"{len(scored)} finished trial{'s' if len(scored) != 1 else ''}"
    fig.suptitle(f"{plan.spec.name}: {metric} by swept value ({plan.spec.mode} is better, {trials})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
