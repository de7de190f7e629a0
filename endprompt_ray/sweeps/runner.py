"""A sweep from start to table: checks, the parent run, the Tuner (or its restore), the results.

The experiment lives under `<storage_path>/<sweep name>`: running the same command again continues it with
`Tuner.restore` (finished trials are kept, unfinished ones restart and resume their Ray Train checkpoint, since a
trial's run name is its trial id), and reopens the same MLflow parent run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ray import tune

from endprompt_ray.errors import ConfigError
from endprompt_ray.runtime.ray_session import connect_ray
from endprompt_ray.sweeps import results as results_mod, runs
from endprompt_ray.sweeps.paths import check_tracking_reachable
from endprompt_ray.sweeps.search import (concurrency, param_space, scheduler, search_algorithm, trial_count,
                                         trial_resources)
from endprompt_ray.sweeps.spec import SweepSpec, base_config, dimensions
from endprompt_ray.sweeps.trial import TrialPlan, make_trial


@dataclass
class SweepOutcome:
    rows: list
    table: str
    files: dict
    parent_run_id: str
    tracking_uri: str
    experiment_path: str
    continued: bool
    concurrent: int

    interrupted: bool = False

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r.status == "FAILED"]


def _max_steps(dims, base) -> int:
    steps = [base.train.max_steps]
    for dim in dims:
        for value in (dim.values if dim.kind in ("grid", "choice") else dim.values[1:2]):
            over = dim.overrides(value)
            if isinstance(over.get("train.max_steps"), (int, float)):
                steps.append(int(over["train.max_steps"]))
    return max(steps)


def _check_same_sweep(spec: SweepSpec, sweep_dir: Path, experiment_path: str) -> None:
    """A sweep name continues only the sweep it names: a changed space under an old name is an error."""
    saved = sweep_dir / "sweep.json"
    now = json.loads(json.dumps(spec.fingerprint(), default=str))
    if saved.is_file() and tune.Tuner.can_restore(experiment_path) and json.loads(saved.read_text()) != now:
        raise ConfigError(f"a sweep named '{spec.name}' already exists ({experiment_path}) with other settings "
                          f"(see {saved}); re-run with the same file and --set values to continue it, or give a new "
                          "--name to start another")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(now, indent=2))


def run_sweep(spec: SweepSpec, retry_failed: bool = False, echo: bool = True) -> SweepOutcome:
    import ray

    base = base_config(spec)
    dims = dimensions(spec)
    connect_ray()
    need = trial_resources(spec, base)
    check_tracking_reachable(base.tracking_uri, need)
    sweep_dir = Path(base.run.output_dir) / "sweeps" / spec.name
    experiment_path = f"{base.storage_path.rstrip('/')}/{spec.name}"
    _check_same_sweep(spec, sweep_dir, experiment_path)
    max_steps = _max_steps(dims, base)
    sched = scheduler(spec, max_steps)
    searcher = search_algorithm(spec)
    params = {"sweep.metric": spec.metric, "sweep.mode": spec.mode, "sweep.search": spec.search,
              "sweep.num_samples": spec.num_samples, "sweep.scheduler": json.dumps(asdict(spec.scheduler)),
              "sweep.probe": json.dumps(asdict(spec.probe) if spec.probe else None),
              "sweep.base_config": spec.base_config, "sweep.overrides": json.dumps(spec.overrides),
              **{f"space.{d.key}": json.dumps({d.kind: d.values}) for d in dims}}
    continued = tune.Tuner.can_restore(experiment_path)
    parent_id = runs.open_parent(base, spec.name, params, continuing=continued)
    plan = TrialPlan(spec=spec, dims=dims, base=base.to_dict(), launch_dir=str(Path.cwd()),
                     parent_run_id=parent_id, driver_node=ray.get_runtime_context().get_node_id())
    # The function asks only for its own small share; its TorchTrainer reserves the workers through a placement
    # group, and max_concurrent_trials keeps the number of trials to what those reservations fit.
    trainable = tune.with_resources(make_trial(plan), {"CPU": spec.trial_cpus})
    space = param_space(dims, spec.search)
    concurrent = concurrency(spec, need)
    # Intermediate reports carry training metrics and the probe; only the last one carries the sweep's metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: TrialRuns prints the progress lines
    labels = {d.key: "" if d.is_group else d.key.rsplit(".", 1)[-1] for d in dims}
    watcher = runs.TrialRuns(base.tracking_uri, base.tracking.experiment, parent_id, spec.name, labels, spec.metric,
                             trial_count(dims, spec), echo=echo)
    if continued:
        tuner = tune.Tuner.restore(experiment_path, trainable, param_space=space, resume_unfinished=True,
                                   resume_errored=False, restart_errored=retry_failed)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched, num_samples=spec.num_samples,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=spec.name, storage_path=base.storage_path, callbacks=[watcher],
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=0)))
    status = "FAILED"
    try:
        grid = tuner.fit()  # Ctrl-C: Tune stops the trials, saves the experiment and returns
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        runs.close_unfinished(base.tracking_uri, base.tracking.experiment, parent_id)
        if status != "FINISHED":
            runs.log_parent(base.tracking_uri, parent_id, [], None, status)
    unfinished, configs = _saved_trials(experiment_path, trial_count(dims, spec))
    rows = results_mod.collect(grid, plan, unfinished, configs)
    files = results_mod.write(rows, plan, sweep_dir)
    best = results_mod.best_row(rows, plan)
    runs.log_parent(base.tracking_uri, parent_id, list(files.values()),
                    {"trial_id": best.trial_id, "params": best.params,
                     "metrics": {k: v for k, v in best.metrics.items() if "/" in k or k == "loss"}} if best else None,
                    "KILLED" if unfinished is not None else "FINISHED")
    return SweepOutcome(rows=rows, table=files["table"].read_text().rstrip(), files=files, parent_run_id=parent_id,
                        tracking_uri=base.tracking_uri, experiment_path=experiment_path, continued=continued,
                        concurrent=concurrent, interrupted=unfinished is not None)


def _saved_trials(experiment_path: str, expected: int) -> tuple[set | None, dict]:
    """(the trials an interrupted sweep will continue, None when it is complete; every trial's sampled values),
    as Tune saved the experiment: what a continued sweep starts from."""
    # it warns about each trial that never reported; the table lists those as interrupted
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    trials = tune.ExperimentAnalysis(experiment_path).trials
    open_ids = {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")}
    return (open_ids if open_ids or len(trials) < expected else None), {t.trial_id: t.config for t in trials}
