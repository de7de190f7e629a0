"""Ray Tune wiring: one trial = one full `run_extend` (fine-tune + RULER), one MLflow run per trial.

The Tuner runs a small driver function per trial; that function launches its own Ray Train V2 TorchTrainer, which
is the pattern Ray recommends for tuning Train V2 jobs (the trainer is not itself a Tune trainable any more).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from ray import tune

from .config import ConfigError, load_config

DISTRIBUTIONS = {"grid": tune.grid_search, "choice": tune.choice}


@dataclass
class SweepSpec:
    name: str = "anchor-sweep"
    base_config: str | None = None  # a configs/*.yaml preset; None: the CPU default
    overrides: list[str] = field(default_factory=list)  # fixed for every trial, `a.b=c`
    space: dict = field(default_factory=dict)  # dotted key -> {grid: [...]} | {choice: [...]} | {uniform: [lo, hi]} ...
    metric: str = "ruler_avg"
    mode: str = "max"
    num_samples: int = 1  # repeats of the grid (random draws for choice/uniform)
    max_concurrent_trials: int = 1
    trial_driver_cpus: float = 0.1  # the trial function mostly waits on its TorchTrainer, which reserves workers


def load_sweep(path: str | Path, extra_overrides: list[str] | None = None) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - set(SweepSpec.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key {sorted(unknown)[0]!r}; "
                          f"valid keys: {sorted(SweepSpec.__dataclass_fields__)}")
    spec = SweepSpec(**raw)
    spec.overrides = list(spec.overrides) + list(extra_overrides or [])
    if spec.metric not in ("ruler_avg", "loss"):
        raise ConfigError(f"sweep metric {spec.metric!r} must be 'ruler_avg' or 'loss'")
    param_space(spec)  # validates the distributions
    trial_config(spec, {key: _example(value) for key, value in spec.space.items()})  # validates keys and values
    return spec


def _example(distribution: dict):
    (kind, values), = distribution.items()
    return values[0]


def param_space(spec: SweepSpec) -> dict:
    space = {}
    for key, distribution in spec.space.items():
        if not isinstance(distribution, dict) or len(distribution) != 1:
            raise ConfigError(f"sweep space {key!r}: give one of {{grid: [...]}}, {{choice: [...]}}, "
                              "{uniform: [lo, hi]}, {randint: [lo, hi]}")
        (kind, values), = distribution.items()
        if kind in DISTRIBUTIONS:
            space[key] = DISTRIBUTIONS[kind](list(values))
        elif kind in ("uniform", "randint") and len(values) == 2:
            space[key] = getattr(tune, kind)(*values)
        else:
            raise ConfigError(f"sweep space {key!r}: unknown distribution {kind!r} or wrong arguments {values!r}")
    return space


def trial_config(spec: SweepSpec, params: dict, trial_name: str = "check"):
    overrides = list(spec.overrides) + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                        for k, v in params.items()]
    overrides.append(f"run.name={spec.name}-{trial_name}")
    return load_config(spec.base_config, overrides)


def make_trial_fn(spec: SweepSpec):
    def run_trial(params: dict) -> None:
        from .pipeline import run_extend

        cfg = trial_config(spec, params, tune.get_context().get_trial_name())
        result = run_extend(cfg, mlflow_tags={"endprompt.sweep": spec.name})
        metrics = {"loss": float(result.final_metrics.get("loss", float("nan"))),
                   "mlflow_run_id": result.mlflow_run_id, "model_dir": str(result.model_dir)}
        if result.ruler:
            metrics["ruler_avg"] = float(result.ruler["overall"])
        tune.report(metrics)

    return run_trial


def run_sweep(spec: SweepSpec, storage_path: str):
    """Run every trial; returns the ResultGrid. `storage_path`: where Tune keeps trial state (local or s3://)."""
    tuner = tune.Tuner(
        tune.with_resources(make_trial_fn(spec), {"CPU": spec.trial_driver_cpus}),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.max_concurrent_trials),
        run_config=tune.RunConfig(name=spec.name, storage_path=storage_path),
    )
    return tuner.fit()


def summarise(spec: SweepSpec, results, output_dir: Path) -> tuple[str, Path]:
    """A table sorted by the metric, written as CSV; returns (printable table, csv path)."""
    rows = []
    for result in results:
        row = {f"config/{k}": v for k, v in (result.config or {}).items()}
        metrics = result.metrics or {}
        row.update({k: metrics.get(k) for k in ("ruler_avg", "loss", "mlflow_run_id")})
        row["error"] = str(result.error).splitlines()[0] if result.error else ""
        rows.append(row)
    reverse = spec.mode == "max"
    rows.sort(key=lambda r: (r.get(spec.metric) is None, -(r[spec.metric] or 0) if reverse else (r[spec.metric] or 0)))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{spec.name}-results.csv"
    columns = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if c.startswith("config/")] + ["ruler_avg", "loss", "mlflow_run_id", "error"]
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in shown} if rows else {}
    lines = ["  ".join(c.ljust(widths[c]) for c in shown)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in shown) for r in rows]
    plot_trials(rows, spec, output_dir / f"{spec.name}-{spec.metric}.png")
    return "\n".join(lines), path


def plot_trials(rows: list[dict], spec: SweepSpec, path: Path) -> Path | None:
    """One bar per finished trial, labelled by its swept values, best first."""
    scored = [r for r in rows if r.get(spec.metric) is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["\n".join(f"{k.removeprefix('config/')}={v}" for k, v in r.items() if k.startswith("config/"))
              for r in scored]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(scored)), 4.0))
    ax.bar(range(len(scored)), [r[spec.metric] for r in scored], color="tab:blue")
    ax.set_xticks(range(len(scored)), labels, fontsize=7)
    ax.set_ylabel(spec.metric)
    ax.set_title(f"{spec.name}: {spec.metric} per trial ({spec.mode} is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))
