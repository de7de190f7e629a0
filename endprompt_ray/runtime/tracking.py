"""MLflow tracking: one run per job (reused when a run name resumes), live training metrics, artifacts."""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from endprompt_ray.config.loader import dump_yaml
from endprompt_ray.config.schema import ExtendConfig

RUN_NAME_TAG = "endprompt.run_name"
RESUME_METRIC = "resume/step"  # one point per resume (a re-run job or a Ray Train restart): the step resumed from
ERROR_TAG = "endprompt.error"  # why a FAILED run failed (the first lines of the error)
TRAIN_METRICS = ("loss", "learning_rate", "tokens_per_s", "step_time_s", "checkpoint_s", "peak_memory_mb",
                 "peak_memory_delta_mb", "epoch", "workers")


def experiment_id(client: MlflowClient, name: str) -> str:
    """The named experiment's id, created if missing. Explicit ids rather than mlflow.set_experiment, which would
    leave a process-wide active experiment behind."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


PARAM_VALUE_LIMIT = 6000  # characters MLflow keeps of a param value


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    """Log params in the batches MLflow accepts (at most 100 per call), values cut to what it stores."""
    items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def start_run(cfg: ExtendConfig, deepspeed_config: dict | None = None, tags: dict | None = None,
              resumed_at: int | None = None) -> str:
    """Open (or reopen, for a resumed run name) the MLflow run and log params and config artifacts.

    `resumed_at`: the step a resumed run continues from. MLflow params are write-once, so the first start's params
    stay; a resume adds params that are new, a `changed.<param>` tag ("old -> new") for each changed one and the
    config it resumed with as config/config-resume-step<N>.yaml (the workers log the `resume/step` point)."""
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    experiment = experiment_id(client, cfg.tracking.experiment)
    existing = client.search_runs([experiment], filter_string=f"tags.`{RUN_NAME_TAG}` = '{cfg.run.name}'",
                                  max_results=1, order_by=["attributes.start_time DESC"])
    run = mlflow.start_run(run_id=existing[0].info.run_id if existing else None, experiment_id=experiment,
                           run_name=None if existing else cfg.run.name,
                           tags={RUN_NAME_TAG: cfg.run.name, **(tags or {})})
    logged = existing[0].data.params if existing else {}
    params = {k: v[:PARAM_VALUE_LIMIT] for k, v in cfg.flat_params().items()}
    log_params(client, run.info.run_id, {k: v for k, v in params.items() if k not in logged})
    if existing:
        mlflow.set_tags({f"changed.{k}": f"{logged[k]} -> {v}"[:5000] for k, v in params.items()
                         if k in logged and logged[k] != v})
    suffix = "" if resumed_at is None else f"-resume-step{resumed_at}"  # the first start's files are kept
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"config{suffix}.yaml").write_text(dump_yaml(cfg))
        if deepspeed_config is not None:
            (Path(tmp) / f"deepspeed{suffix}.json").write_text(json.dumps(deepspeed_config, indent=2))
        mlflow.log_artifacts(tmp, artifact_path="config")
    return run.info.run_id


class MlflowTrainCallback(UserCallback):
    """Logs rank 0's training metrics as they are reported. Runs in the Ray Train controller, which Ray places on
    the driver's node, so a local sqlite tracking URI works as well as a server."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not metrics or "loss" not in metrics[0]:
            return
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        step = int(metrics[0]["step"])
        values = {f"train/{k}": float(metrics[0][k]) for k in TRAIN_METRICS if k in metrics[0]}
        values.update({k: float(v) for k, v in metrics[0].items() if k.startswith("probe/")})  # sweeps/probe.py
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, step) for k, v in values.items()]
        if "resumed_from_step" in metrics[0]:  # the workers restored a checkpoint: a point at the step resumed from
            resumed = int(metrics[0]["resumed_from_step"])
            points.append(Metric(RESUME_METRIC, float(resumed), now, resumed))
        _retry_while_locked(lambda: self._client.log_batch(self.run_id, metrics=points))


def _retry_while_locked(call, attempts: int = 8, first_wait_s: float = 0.5):
    """Run an MLflow call, waiting out a busy sqlite store: concurrent runs (a sweep's trials) share one database
    file, and on a loaded machine a writer can hold its lock past the 20 s MLflow waits for it. Other errors are
    raised at once."""
    wait = first_wait_s
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # MlflowException or SQLAlchemy's OperationalError, depending on the call
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(wait)
            wait = min(2 * wait, 16.0)


def log_data_report(report: dict[str, int]) -> None:
    mlflow.log_metrics({f"data/{k}": float(v) for k, v in report.items()})
    mlflow.log_dict(report, "data_report.json")


@contextmanager
def run_status(run_id: str):
    """End the active run FINISHED when the block completes, KILLED when it is interrupted (Ctrl-C, a stopped job)
    or was marked KILLED from outside before it raised, FAILED with the error as a tag when it raises: a crashed run
    must not read as a finished one."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except BaseException as err:
        if _stored_status(run_id) == "KILLED":
            status = "KILLED"  # stopped from outside first (a sweep's scheduler): this error is how the stop arrived
        else:
            MlflowClient().set_tag(run_id, ERROR_TAG, error_text(err))
        raise
    finally:
        mlflow.end_run(status)


def _stored_status(run_id: str) -> str | None:
    """The run's status in the store, None if the store cannot say (it may be what failed): the error is re-raised."""
    try:
        return MlflowClient().get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - never mask the error being handled
        return None


def error_text(err: BaseException, limit: int = 4000) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) <= limit else text[:limit // 4] + "\n...\n" + text[-3 * limit // 4:]
