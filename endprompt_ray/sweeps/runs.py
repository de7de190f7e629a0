"""The sweep in MLflow: one parent run per sweep name, one nested child run per trial, statuses kept honest.

A trial's own process ends its run FINISHED or FAILED (pipeline.run_extend). What it cannot record the driver does,
from Tune's callbacks: a trial that a scheduler stopped early, or that Ctrl-C interrupted, is marked KILLED; a trial
that died before its run existed (a bad value, a lost node) gets a FAILED run with its error, so every trial is in
MLflow.
"""

from __future__ import annotations

import json
import re
import time

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.runtime.tracking import ERROR_TAG, experiment_id, log_params
from endprompt_ray.sweeps.cleanup import Reaper
from endprompt_ray.sweeps.trial import FINAL, SWEEP_TAG, TRIAL_TAG

ROLE_TAG = "endprompt.sweep_role"


def open_parent(cfg: ExtendConfig, sweep_name: str, params: dict, continuing: bool) -> str:
    """The sweep's parent run: the latest of this sweep name when continuing it, else a new one."""
    client = MlflowClient(cfg.tracking_uri)
    experiment = experiment_id(client, cfg.tracking.experiment)
    found = client.search_runs([experiment], f"tags.`{SWEEP_TAG}` = '{sweep_name}' and tags.`{ROLE_TAG}` = 'parent'",
                               max_results=1, order_by=["attributes.start_time DESC"]) if continuing else []
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(experiment, run_name=sweep_name, tags={SWEEP_TAG: sweep_name, ROLE_TAG: "parent"})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def child_runs(tracking_uri: str, experiment: str, parent_id: str) -> dict[str, object]:
    """trial id -> its MLflow run (the newest, should a trial have two)."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=5000, order_by=["attributes.start_time ASC"])
    return {r.data.tags.get(TRIAL_TAG): r for r in runs if r.data.tags.get(TRIAL_TAG)}


class TrialRuns(Callback):
    """Driver-side Tune callback: MLflow statuses the trials' own processes cannot set, and one progress line per
    trial event. Plain data only: Tune pickles it with the experiment and restores it on resume."""

    def __init__(self, tracking_uri: str, experiment: str, parent_id: str, sweep_name: str, labels: dict,
                 metric: str, total: int | None, echo: bool = True) -> None:
        self.tracking_uri, self.experiment, self.parent_id = tracking_uri, experiment, parent_id
        self.sweep_name, self.labels, self.metric, self.total, self.echo = sweep_name, labels, metric, total, echo
        self.reap = Reaper()

    def on_step_end(self, iteration, trials, **info):
        self.reap()  # resources of trials stopped early (see cleanup.py)

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def _label(self, trial) -> str:
        return ", ".join(f"{self.labels[k]}={v}" if self.labels.get(k) else str(v)  # a group's value names its keys
                         for k, v in (trial.config or {}).items())

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} started: {self._label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "probe/nll" in result and FINAL not in result:
            self._say(f"trial {trial.trial_id} step {int(result.get('step', 0))}: probe nll "
                      f"{result['probe/nll']:.3f}, probe acc {result.get('probe/acc', float('nan')):.0f}%, "
                      f"train loss {result.get('loss', float('nan')):.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        of = _progress(trials, trial, self.total)
        if result.get(FINAL):
            value = result.get(self.metric)
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else "missing"
            self._say(f"trial {trial.trial_id} done ({of}): {self.metric} = {shown}")
            return
        step = int(result.get("step", 0))
        self._say(f"trial {trial.trial_id} stopped early at step {step} ({of})")
        self.reap.arm()
        self._mark(trial, "KILLED", f"stopped by the scheduler at step {step}")

    def on_trial_error(self, iteration, trials, trial, **info):
        message = _first_line(trial)
        self._say(f"trial {trial.trial_id} FAILED ({_progress(trials, trial, self.total)}): {message}")
        self.reap.arm()
        self._mark(trial, "FAILED", message)

    def _mark(self, trial, status: str, why: str) -> None:
        client = MlflowClient(self.tracking_uri)
        run = child_runs(self.tracking_uri, self.experiment, self.parent_id).get(trial.trial_id)
        if run is None:  # it failed before its run existed: record it anyway
            exp = client.get_experiment_by_name(self.experiment)
            run = client.create_run(exp.experiment_id, run_name=f"{self.sweep_name}-{trial.trial_id}",
                                    tags={"mlflow.parentRunId": self.parent_id, SWEEP_TAG: self.sweep_name,
                                          TRIAL_TAG: trial.trial_id})
            log_params(client, run.info.run_id, {f"sweep.{k}": v for k, v in (trial.config or {}).items()})
        elif status == "KILLED" and run.info.status == "FAILED":
            # Tune stopped it and its process then failed on the way out (the stop reaching it): it was stopped
            why += f" (its process then ended with: {run.data.tags.get(ERROR_TAG, 'no error recorded')})"
            if ERROR_TAG in run.data.tags:
                client.delete_tag(run.info.run_id, ERROR_TAG)
        elif run.info.status != "RUNNING":
            return  # the trial's own process already ended it
        client.log_batch(run.info.run_id, tags=[RunTag(ERROR_TAG if status == "FAILED" else "endprompt.stopped",
                                                       why[:4000])])
        client.set_terminated(run.info.run_id, status)


def _progress(trials, ending, total: int | None) -> str:
    """'3/8': trials ended so far, counting those of an earlier run of a continued sweep."""
    done = sum(t is ending or t.status in ("TERMINATED", "ERROR") for t in trials)
    return f"{done}/{total}" if total else str(done)


def _first_line(trial) -> str:
    """The error's own message, not Tune's wrapper: the last informative line of the saved traceback."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        pass
    text = _SQL_TRAILER.sub("", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(" ")]
    return (lines[-1] if lines else "unknown error (see the trial's log)")[:500]


# what SQLAlchemy appends after a database error's message: the statement, its parameters and a help link
_SQL_TRAILER = re.compile(r"^\[SQL: .*?^\(Background on this error at: [^\n]*$", re.S | re.M)


def close_unfinished(tracking_uri: str, experiment: str, parent_id: str, status: str = "KILLED") -> int:
    """Children still RUNNING once Tune returned were interrupted with the sweep; returns how many."""
    client = MlflowClient(tracking_uri)
    stale = [r for r in child_runs(tracking_uri, experiment, parent_id).values() if r.info.status == "RUNNING"]
    for run in stale:
        client.set_terminated(run.info.run_id, status)
    return len(stale)


def log_parent(tracking_uri: str, parent_id: str, files: list, best: dict | None, status: str) -> None:
    client = MlflowClient(tracking_uri)
    for path in files:
        client.log_artifact(parent_id, str(path))
    if best:
        now = int(time.time() * 1000)
        metrics = [Metric(f"best/{k}", float(v), now, 0) for k, v in best.get("metrics", {}).items()
                   if isinstance(v, (int, float)) and v == v]
        client.log_batch(parent_id, metrics=metrics, tags=[RunTag("best_trial", best["trial_id"]),
                                                           RunTag("best_params", json.dumps(best["params"]))])
    client.set_terminated(parent_id, status)
