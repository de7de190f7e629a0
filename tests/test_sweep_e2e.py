"""Sweeps end to end: real Ray Tune over real Ray Train + DeepSpeed trials, MLflow on sqlite, the tiny model."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from endprompt_ray.config.loader import load_config
from endprompt_ray.runtime.tracking import ERROR_TAG

ROOT = Path(__file__).resolve().parent.parent
# Seconds per trial instead of minutes: the random tiny model, a few steps, one passkey sample.
FAST = ["model.name_or_path=tiny", "train.max_steps=2", "train.checkpoint_every=2", "train.report_every=1",
        "train.micro_batch_size=2", "train.warmup_steps=0", "data.demo_documents=64", "eval.lengths=[2048]",
        "eval.passkey_depths=[0.5]", "eval.passkey_samples=1"]


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep(*args):
    return _module("search_anchor", ROOT / "tune_spaces" / "search_anchor.py").main(list(args))


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def _runs(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("endprompt-ray").experiment_id])
    parents = [r for r in runs if r.data.tags.get("endprompt.sweep_role") == "parent"]
    assert len(parents) == 1
    children = {r.data.tags["endprompt.trial_id"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(runs) == 1 + len(children)  # every run of the database belongs to the sweep
    return client, parents[0], children


@pytest.mark.slow
def test_default_command_from_a_fresh_directory_keeps_every_trial_in_the_printed_mlflow(
        local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths only: the default outputs/ under the launch directory
    args = ["--search", "random", "--num-samples", "2", "--scheduler", "none", *_sets(FAST)]
    assert _sweep(*args) == 0
    out = capsys.readouterr().out
    uri = re.search(r"parent run \w+ \(one child run per trial\) at (\S+)", out).group(1)
    assert uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    client, parent, children = _runs(uri)
    assert len(children) == 2
    for trial_id, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["method.anchor"] in ("fixed", "random") and "rope.factor" in run.data.params
        assert {"train/loss", "probe/nll", "probe/acc", "passkey/acc/2048"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2  # the curve, one point a step
        assert (tmp_path / "outputs" / f"anchor-sweep-{trial_id}" / "model" / "config.json").is_file()
    stray = [p for p in tmp_path.rglob("mlflow.db") if p != tmp_path / "outputs" / "mlflow.db"]
    assert not stray and not list((tmp_path / "outputs" / "ray_results").rglob("outputs"))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.txt", "passkey_acc_target.png", "best_config.yaml"} <= artifacts
    assert "best/passkey/acc/target" in parent.data.metrics and parent.info.status == "FINISHED"
    table = (tmp_path / "outputs" / "sweeps" / "anchor-sweep" / "results.txt").read_text()
    assert table.splitlines()[0].split()[:6] == ["rank", "trial", "anchor", "prompt", "rope.factor",
                                                 "passkey/acc/target"]
    assert all(trial_id in table for trial_id in children)

    # The best config is the best trial's own config and runs unchanged through extend.py.
    best = tmp_path / "outputs" / "sweeps" / "anchor-sweep" / "best_config.yaml"
    extend = _module("extend", ROOT / "pipelines" / "extend.py")
    capsys.readouterr()
    assert extend.main(["--config", str(best), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    best_trial = parent.data.tags["best_trial"]
    trial_cfg = load_config(tmp_path / "outputs" / f"anchor-sweep-{best_trial}" / "config.yaml").to_dict()
    assert printed["run"].pop("name") == "anchor-sweep-best" and trial_cfg["run"].pop("name")
    assert printed == trial_cfg

    # The same command again continues the same sweep: nothing is re-run, the same runs are kept.
    started = {k: r.info.start_time for k, r in children.items()}
    assert _sweep(*args) == 0
    assert "sweep 'anchor-sweep' (continued): 2 trials, 2 finished" in capsys.readouterr().out
    _, parent_again, children_again = _runs(uri)
    assert parent_again.info.run_id == parent.info.run_id
    assert {k: r.info.start_time for k, r in children_again.items()} == started


@pytest.mark.slow
def test_failed_and_early_stopped_trials_are_recorded_and_the_rest_complete(local_ray, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    sweep = tmp_path / "cases.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "cases", "overrides": FAST + ["train.max_steps=6", "train.checkpoint_every=6"],
        # in this order, one at a time: a trial that cannot learn, one that diverges, one with no data
        "space": {"case": {"grid": [{"train.learning_rate": 0.0}, {"train.learning_rate": 5.0},
                                    {"data.paths": [str(empty)]}]}},
        "probe": {"every": 2, "samples": 1, "depths": [0.5]},
        "scheduler": {"type": "asha", "metric": "probe/nll", "mode": "min", "grace_period": 2,
                      "reduction_factor": 2},
        "max_concurrent_trials": 1}))
    assert _sweep("--space", str(sweep)) == 1  # a failed trial: exit code 1, after every trial ran
    out = capsys.readouterr().out
    assert "stopped early at step 2" in out and "FAILED" in out
    client, parent, children = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert len(children) == 3
    # the no-data trial failed before its own run opened: the driver recorded it with the trial's swept values
    runs = {r.data.params.get("train.learning_rate", "no_data"): r for r in children.values()}
    ok, diverged, no_data = runs["0.0"], runs["5.0"], runs["no_data"]
    assert ok.info.status == "FINISHED" and "passkey/acc/2048" in ok.data.metrics
    assert len(client.get_metric_history(ok.info.run_id, "probe/nll")) == 3  # steps 2, 4, 6
    assert diverged.info.status == "KILLED" and "passkey/acc/2048" not in diverged.data.metrics
    assert diverged.data.metrics["probe/nll"] > ok.data.metrics["probe/nll"]
    assert no_data.info.status == "FAILED" and "contain no data" in no_data.data.tags[ERROR_TAG]
    assert no_data.data.params["sweep.case"].startswith("paths=")
    table = (tmp_path / "outputs" / "sweeps" / "cases" / "results.txt").read_text().splitlines()
    assert "done" in table[1] and "stopped at step 2" in table[2] and "FAILED: " in table[3]
    assert parent.info.status == "FINISHED"


def _trial_states(experiment: Path) -> dict:
    """trial id -> status, from the experiment state Tune last saved (what a continued sweep starts from)."""
    import json

    files = sorted(experiment.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except ValueError:  # being rewritten
        return {}
    return {t["trial_id"]: t["status"] for t in (json.loads(raw) for raw, _ in data["trial_data"])}


@pytest.mark.slow
def test_killed_sweep_continues_without_rerunning_finished_trials(local_ray, tmp_path, monkeypatch, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "resume.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "resume", "overrides": FAST + ["train.checkpoint_every=2"], "max_concurrent_trials": 1,
        "space": {"train.max_steps": {"grid": [2, 40]}}}))
    script = ROOT / "tune_spaces" / "search_anchor.py"
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}  # the session's Ray
    driver = subprocess.Popen([sys.executable, str(script), "--space", str(sweep)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    experiment, deadline = tmp_path / "outputs" / "ray_results" / "resume", time.monotonic() + 420
    try:  # kill the driver once the first trial is finished (as Tune saved it) and the second has a checkpoint
        while time.monotonic() < deadline and driver.poll() is None:
            states = _trial_states(experiment)
            second = sorted(states)[1:2]
            snapshot = tmp_path / "outputs" / "ray_results" / f"resume-{second[0] if second else ''}" / \
                "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it has
            if sorted(states.values()) == ["RUNNING", "TERMINATED"] and snapshot.is_file() and \
                    "checkpoint_" in snapshot.read_text():
                break
            time.sleep(1)
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        killed_ms = time.time() * 1000
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    client, _, before = _runs(uri)
    first, second = sorted(before)
    assert before[first].info.status == "FINISHED" and before[second].info.status == "RUNNING"

    assert _sweep("--space", str(sweep)) == 0
    assert "sweep 'resume' (continued): 2 trials, 2 finished" in capsys.readouterr().out
    _, _, after = _runs(uri)
    assert sorted(after) == [first, second]
    assert after[first].info.start_time == before[first].info.start_time  # not re-run
    assert after[first].info.end_time == before[first].info.end_time
    assert after[second].info.status == "FINISHED" and after[second].info.run_id == before[second].info.run_id
    history = client.get_metric_history(after[second].info.run_id, "train/loss")
    resumed = [m.step for m in history if m.timestamp > killed_ms]
    assert max(resumed) == 40 and min(resumed) > 2  # continued from its checkpoint, not from step 1
