"""Sweep files, spaces, paths, tracking URIs and run statuses: everything the driver decides before Tune runs."""

import importlib.util
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray import tune

from endprompt_ray.config.loader import load_config
from endprompt_ray.config.schema import config_fields
from endprompt_ray.errors import ConfigError
from endprompt_ray.runtime.tracking import ERROR_TAG, run_status
from endprompt_ray.sweeps import dimensions, load_sweep
from endprompt_ray.sweeps.paths import check_tracking_reachable, is_node_local
from endprompt_ray.sweeps.results import Row, write_best_config
from endprompt_ray.sweeps.search import param_space, trial_count
from endprompt_ray.sweeps.spec import SweepSpec, base_config
from endprompt_ray.sweeps.trial import TrialPlan

ROOT = Path(__file__).resolve().parent.parent


def _script(name="search_anchor", path=ROOT / "tune_spaces" / "search_anchor.py"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep(tmp_path, **raw) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"space": {"method.anchor_offset": {"grid": [0, 1]}}, **raw}))
    return path


@pytest.mark.parametrize("raw, message", [
    ({"space": {"method.anchor_ofset": {"grid": [0, 1]}}}, r"unknown config key 'method.anchor_ofset'"),
    ({"space": {"modle.name_or_path": {"grid": ["tiny"]}}}, r"'modle.name_or_path' is not a config key"),
    ({"space": {"method.anchor_offset": {"normal": [0, 1]}}}, r"unknown distribution 'normal'"),
    ({"space": {"method.anchor_offset": {"grid": []}}}, r"grid needs a non-empty list"),
    ({"space": {"train.learning_rate": {"loguniform": [1e-3, 1e-4]}}}, r"range \[0.001, 0.0001\] is empty"),
    ({"space": {"train.learning_rate": {"loguniform": [0, 1e-3]}}}, r"loguniform needs lo > 0"),
    ({"space": {"train.max_steps": {"qrandint": [10, 20]}}}, r"qrandint takes \[lo, hi, q\]"),
    ({"space": {"method.anchor": {"grid": ["fixed", "sometimes"]}}}, r"value 'sometimes'.*must be one of"),
    ({"space": {"run.output_dir": {"grid": ["a", "b"]}}}, r"run.output_dir cannot be swept"),
    ({"space": {"anchor": {"grid": [{"anchor": "random"}]}}}, r"each option must map dotted config keys"),
    ({"space": {"anchor": {"grid": [{"method.anchor": "random"}]}, "method.anchor": {"grid": ["fixed"]}}},
     r"method.anchor is set by both"),
    ({"space": {"method.physical_length": {"grid": [256, 1024]}, "method.target_length": {"grid": [512, 2048]}}},
     r"grid point .*physical_length': 1024, 'method.target_length': 512.*must exceed"),
    ({"space": {}}, r"space is empty"),
    ({"spaces": {}}, r"unknown key 'spaces'"),
    ({"metric": "accuracy"}, r"metric='accuracy'"),
    ({"metric": "ruler/avg"}, r"needs the ruler evaluation"),
    ({"scheduler": {"type": "asha"}}, r"needs the probe"),
    ({"search": "bayes"}, r"search='bayes' must be one of"),
    ({"num_samples": "many"}, r"sweep file .*: num_samples='many' must be an integer"),  # typed as the main config
    ({"scheduler": {"grace_period": [100]}}, r"scheduler.grace_period=\[100\] must be an integer"),
    ({"probe": {"evry": 50}}, r"unknown key probe.'evry'; valid keys here: \['depths', 'every'"),
])
def test_bad_sweep_files_name_the_key_and_the_fix(tmp_path, raw, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_sweep(tmp_path, **raw))


def test_script_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    assert _script().main(["--space", str(tmp_path / "missing.yaml")]) == 2
    assert "sweep error: sweep file" in capsys.readouterr().err


def test_default_space_crosses_three_dimensions_and_keeps_random_anchors_off_offsets():
    spec = load_sweep(ROOT / "endprompt_ray" / "presets" / "sweeps" / "anchor_space.yaml")
    dims = {d.key: d for d in dimensions(spec)}
    touched = {k for d in dims.values() for option in (d.options.values() or [{d.key: 0}]) for k in option}
    assert {"method.anchor", "method.anchor_offset", "method.prompt_source", "rope.factor"} <= touched
    for option in dims["anchor"].options.values():  # conditional: an offset only with the fixed anchor
        assert ("method.anchor_offset" in option) == (option["method.anchor"] == "fixed")
    assert trial_count(list(dims.values()), spec) == 8
    base = base_config(spec)
    assert (base.model.name_or_path, base.method.physical_length, base.method.target_length) == ("tiny-base", 256, 2048)
    plan = TrialPlan(spec, list(dims.values()), base.to_dict(), str(Path.cwd()), "parent", "node")
    cfg = plan.config({"anchor": "anchor=random", "prompt": "prompt_source=tail,tail_length=20", "rope.factor": 16})
    assert (cfg.method.anchor, cfg.method.prompt_source, cfg.method.tail_length, cfg.rope.factor) == (
        "random", "tail", 20, 16.0)
    llama = load_sweep(ROOT / "endprompt_ray" / "presets" / "sweeps" / "anchor_space_llama3.yaml")
    assert all("method.anchor_offset" not in o for o in dimensions(llama)[0].options.values()
               if o["method.anchor"] == "random")



def test_the_learning_rate_space_sweeps_one_arm_of_the_held_out_reproduction_on_validation_draws():
    spec = load_sweep(ROOT / "endprompt_ray" / "presets" / "sweeps" / "lr_heldout.yaml", ["method.kind=pose"])
    (dim,) = dimensions(spec)
    assert (dim.key, trial_count([dim], spec)) == ("train.learning_rate", 3)
    base = base_config(spec)
    assert (base.model.name_or_path, base.data.demo_corpus, base.method.kind) == ("tiny-base-recall", "recall", "pose")
    assert base.run.seed not in (0, 1, 2)  # the minirepro's test seeds: the picked rate never saw their samples
    assert base.global_batch == load_config("tiny-heldout").global_batch  # one worker, the preset's batch
    assert (spec.scheduler.type, spec.scheduler.metric, spec.metric) == ("asha", "probe/nll", "passkey/avg")
    plan = TrialPlan(spec, [dim], base.to_dict(), str(Path.cwd()), "parent", "node")
    assert plan.config({"train.learning_rate": 5e-4}).train.learning_rate == 5e-4

def test_numeric_ranges_become_tune_domains(tmp_path):
    spec = load_sweep(_sweep(tmp_path, space={
        "train.learning_rate": {"loguniform": [1e-5, 1e-3]},
        "method.anchor_offset": {"qrandint": [0, 1024, 256]},
        "rope.factor": {"quniform": [8, 16, 2]},
        "method.anchor": {"grid": ["fixed", "random"]}}, search="random", num_samples=3))
    space = param_space(dimensions(spec), spec.search)
    assert isinstance(space["train.learning_rate"], tune.search.sample.Float)
    assert isinstance(space["train.learning_rate"].sampler, tune.search.sample.LogUniform)
    assert space["method.anchor_offset"].sampler.q == 256
    assert isinstance(space["method.anchor"], tune.search.sample.Categorical)  # random search draws grid values
    assert trial_count(dimensions(spec), spec) == 3


def test_every_path_is_pinned_to_the_launch_directory(tmp_path, monkeypatch):
    launch = tmp_path / "launch"
    (launch / "corpus").mkdir(parents=True)
    (launch / "corpus" / "a.txt").write_text("hello")
    (launch / "ds.json").write_text((ROOT / "endprompt_ray" / "presets" / "deepspeed" / "zero2.json").read_text())
    monkeypatch.chdir(launch)
    spec = load_sweep(_sweep(launch, overrides=[
        "run.output_dir=out", "run.storage_path=state", "data.paths=[corpus]", "train.deepspeed_config=ds.json",
        "tracking.tracking_uri=sqlite:///out/mlflow.db"]))
    base = base_config(spec)
    plan = TrialPlan(spec, dimensions(spec), base.to_dict(), str(launch), "parent", "node")
    monkeypatch.chdir(tmp_path)  # a trial runs somewhere else (Tune's trial directory)
    cfg = plan.config({"method.anchor_offset": 1}, "t1")
    assert cfg.run.output_dir == str(launch / "out") and cfg.storage_path == str(launch / "state")
    assert cfg.data.paths == [str(launch / "corpus")]
    assert cfg.train.deepspeed_config == str(launch / "ds.json")
    assert cfg.tracking_uri == f"sqlite:///{launch / 'out' / 'mlflow.db'}"
    assert cfg.run.name == "anchor-sweep-t1"


def test_node_local_tracking_uris():
    for uri in ("http://127.0.0.1:5000", "http://localhost:5000", "http://[::1]:5000", "sqlite:////x/mlflow.db",
                "file:///x/mlruns", "http://0.0.0.0:5000"):
        assert is_node_local(uri), uri
    for uri in ("http://10.0.1.23:5000", "https://mlflow.example.com", "databricks"):
        assert not is_node_local(uri), uri


def test_loopback_tracking_fails_fast_when_trials_cannot_run_beside_the_driver(local_ray):
    check_tracking_reachable("http://127.0.0.1:5000", {"CPU": 0.5})  # one node that holds a trial: fine
    check_tracking_reachable("http://10.0.1.23:5000", {"GPU": 8})  # a shared server: fine anywhere
    with pytest.raises(ConfigError, match=r"127.0.0.1:5000 is a loopback address.*http://<head private IP>:5000"):
        check_tracking_reachable("http://127.0.0.1:5000", {"CPU": 0.5, "GPU": 8})


def test_run_status_marks_failed_killed_and_finished(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    statuses = {}
    for name, error in (("ok", None), ("crash", ValueError("bad batch")), ("stop", KeyboardInterrupt())):
        run_id = mlflow.start_run(run_name=name).info.run_id
        try:
            with run_status(run_id):
                if error is not None:
                    raise error
        except (ValueError, KeyboardInterrupt):
            pass
        statuses[name] = client.get_run(run_id)
    assert {k: r.info.status for k, r in statuses.items()} == {"ok": "FINISHED", "crash": "FAILED", "stop": "KILLED"}
    assert statuses["crash"].data.tags[ERROR_TAG] == "ValueError: bad batch"


def test_a_trial_stopped_by_the_scheduler_reads_killed_whichever_side_ends_its_run_first(mlflow_uri):
    """Tune stopping a trial and the trial's process failing on the way out race: the run must end KILLED."""
    from ray.tune.experiment import Trial

    from endprompt_ray.sweeps.runs import TrialRuns, open_parent
    from endprompt_ray.sweeps.trial import SWEEP_TAG, TRIAL_TAG

    cfg = load_config(None, [f"tracking.tracking_uri={mlflow_uri}"])
    client = MlflowClient(mlflow_uri)
    parent = open_parent(cfg, "race", {}, continuing=False)
    runs = TrialRuns(mlflow_uri, cfg.tracking.experiment, parent, "race", labels={}, metric="m", total=2, echo=False)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    ended = {}
    for trial_id, driver_first in (("driver_first", True), ("process_first", False)):
        run_id = mlflow.start_run(experiment_id=experiment, run_name=trial_id, tags={
            "mlflow.parentRunId": parent, SWEEP_TAG: "race", TRIAL_TAG: trial_id}).info.run_id
        trial = Trial("run_trial", config={"case": trial_id}, trial_id=trial_id, stub=True)
        if driver_first:
            runs._mark(trial, "KILLED", "stopped by the scheduler at step 2")
        with pytest.raises(RuntimeError):
            with run_status(run_id):
                raise RuntimeError("the Train controller died")  # how the stop reaches the trial's thread
        if not driver_first:
            assert client.get_run(run_id).info.status == "FAILED"
            runs._mark(trial, "KILLED", "stopped by the scheduler at step 2")
        ended[trial_id] = client.get_run(run_id)
    assert {k: r.info.status for k, r in ended.items()} == {"driver_first": "KILLED", "process_first": "KILLED"}
    assert not any(ERROR_TAG in r.data.tags for r in ended.values())
    assert ended["process_first"].data.tags["endprompt.stopped"] == (
        "stopped by the scheduler at step 2 (its process then ended with: RuntimeError: the Train controller died)")


def test_params_are_logged_in_batches_and_a_resume_adds_and_tags_instead_of_rewriting(tmp_path, mlflow_uri):
    from endprompt_ray.config.loader import load_config
    from endprompt_ray.runtime.tracking import log_params, start_run

    client = MlflowClient(mlflow_uri)  # the fixture also restores the process's tracking URI that start_run sets
    run = client.create_run(client.create_experiment("batches"))
    log_params(client, run.info.run_id, {f"p{i:03d}": "x" * (7000 if i == 0 else 1) for i in range(250)})
    logged = client.get_run(run.info.run_id).data.params
    assert len(logged) == 250 and len(logged["p000"]) == 6000  # 3 calls of at most 100; MLflow keeps 6000 chars

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "train.max_steps=4"])
    try:
        first = start_run(cfg)
    finally:
        mlflow.end_run()
    params = client.get_run(first).data.params
    assert len(params) == len(cfg.flat_params()) > 90 and params["train.max_steps"] == "4"
    try:
        again = start_run(load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "train.max_steps=6"]),
                          resumed_at=4)
    finally:
        mlflow.end_run()
    run = client.get_run(again)
    assert again == first and run.data.params["train.max_steps"] == "4"  # write-once: the first start's stays
    assert run.data.tags["changed.train.max_steps"] == "4 -> 6"


def test_best_config_runs_unchanged_through_extend(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(ROOT / "endprompt_ray" / "presets" / "sweeps" / "anchor_space.yaml")
    base = base_config(spec)
    plan = TrialPlan(spec, dimensions(spec), base.to_dict(), str(tmp_path), "parent", "node")
    # values long enough that a default-width YAML dump of them would wrap out of the comment header
    params = {"anchor": "anchor=fixed,anchor_offset=0", "prompt": "prompt_source=tail,tail_length=20", "rope.factor": 16}
    path = write_best_config(Row("t3", params, {spec.metric: 55.0}, "done"), plan, tmp_path / "best.yaml")
    extend = _script("extend", ROOT / "pipelines" / "extend.py")
    assert extend.main(["--config", str(path), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = plan.config(params).to_dict()
    expected["run"]["name"] = "anchor-sweep-best"  # a new run, not a resume of the trial's checkpoint
    assert printed == expected == load_config(path).to_dict()


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_model_based_search_sees_only_final_results(tmp_path, search):
    pytest.importorskip(search)
    from endprompt_ray.sweeps.search import FinalResultsOnly, search_algorithm

    spec = load_sweep(_sweep(tmp_path, search=search, num_samples=4, space={
        "anchor": {"grid": [{"method.anchor": "random"}, {"method.anchor": "fixed", "method.anchor_offset": 0}]},
        "train.learning_rate": {"loguniform": [1e-5, 1e-3]}}))
    searcher = search_algorithm(spec)
    assert isinstance(searcher, FinalResultsOnly)
    searcher.set_search_properties(None, None, param_space(dimensions(spec), spec.search))
    config = searcher.suggest("t1")
    assert config["anchor"] in ("anchor=random", "anchor=fixed,anchor_offset=0")
    assert 1e-5 <= config["train.learning_rate"] <= 1e-3
    searcher.on_trial_result("t1", {"step": 10, "probe/nll": 3.0, "training_iteration": 1})  # no sweep metric: kept out
    searcher.on_trial_complete("t1", {spec.metric: 40.0, "training_iteration": 2})
    assert searcher.suggest("t2")["anchor"] in ("anchor=random", "anchor=fixed,anchor_offset=0")
    if search == "optuna":
        trials = searcher.searcher._ot_study.trials
        assert trials[0].value == 40.0 and trials[0].intermediate_values == {}


def test_missing_searcher_package_is_one_clear_error(tmp_path, monkeypatch):
    import sys

    from endprompt_ray.sweeps.search import search_algorithm

    for name in ("hyperopt", "ray.tune.search.hyperopt"):  # as if not installed (also if imported before)
        monkeypatch.setitem(sys.modules, name, None)
    spec = load_sweep(_sweep(tmp_path, search="hyperopt"))
    with pytest.raises(ConfigError, match=r"search=hyperopt needs the hyperopt package: pip install hyperopt"):
        search_algorithm(spec)


def test_probe_scores_the_key_tokens_of_held_out_passkeys(tiny_tokenizer, one_thread):
    import torch

    from endprompt_ray.models.loading import load_model
    from endprompt_ray.eval.probe import PasskeyProbe

    probe = PasskeyProbe(tiny_tokenizer, length=512, depths=[0.0, 1.0], samples=2, seed=1, every=50)
    assert len(probe.items) == 4 and all(0 < n <= 8 and len(ids) <= 512 for ids, n in probe.items)
    assert [probe.due(s, final=False) for s in (10, 40, 50, 60, 100)] == [False, False, True, False, True]
    model = load_model("tiny", tiny=load_config(None, ["model.name_or_path=tiny"]).model.tiny).train()
    scores = probe(model, torch.device("cpu"))
    assert model.training  # handed back as it came
    with torch.no_grad():  # reference: full logits, cross-entropy over each sample's key tokens
        model.eval()
        total = sum(torch.nn.functional.cross_entropy(model(torch.tensor([ids])).logits[0, -n - 1:-1],
                                                      torch.tensor(ids[-n:]), reduction="sum").item()
                    for ids, n in probe.items)
    assert scores["probe/nll"] == pytest.approx(total / sum(n for _, n in probe.items), rel=1e-4)
    assert scores["probe/acc"] == 0.0  # a random model knows no key


def test_metric_logging_waits_out_a_locked_sqlite_store(mlflow_uri):
    """A sweep's concurrent trials share one sqlite file: a report that finds it locked past the 20 s MLflow waits
    (its busy_timeout) is retried (an unretried one failed the trial's training with 'database is locked')."""
    import sqlite3
    import threading

    from mlflow.tracking import MlflowClient

    from endprompt_ray.runtime.tracking import MlflowTrainCallback

    client = MlflowClient(mlflow_uri)
    run = client.create_run(client.create_experiment("locked"))
    holder = sqlite3.connect(mlflow_uri.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    release = threading.Timer(22.0, holder.rollback)
    release.start()
    try:
        MlflowTrainCallback(mlflow_uri, run.info.run_id).after_report(None, [{"step": 3, "loss": 2.5}], None)
    finally:
        release.join()
        holder.close()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(3, 2.5)]


def test_a_failed_trial_is_summarised_by_the_database_error_not_its_trailer(tmp_path):
    """SQLAlchemy follows a database error with the statement, its parameters and a help link."""
    from types import SimpleNamespace

    from endprompt_ray.sweeps.runs import _first_line

    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                          "ray.train.ControllerError: Training failed due to controller error:\n"
                          "(sqlite3.OperationalError) database is locked\n[SQL: SELECT runs.run_uuid\nFROM runs\n"
                          "WHERE runs.run_uuid = ?]\n[parameters: ('372a',)]\n"
                          "(Background on this error at: https://sqlalche.me/e/21/e3q8)\n")
    assert _first_line(SimpleNamespace(error_file=str(error_file))) == "(sqlite3.OperationalError) database is locked"


def test_every_sweep_setting_is_documented():
    docs = {d.key: d for d in config_fields(SweepSpec)}
    assert "scheduler.grace_period" in docs and docs["probe"].type == "ProbeSpec | None"
    assert all(d.help.strip() for d in docs.values()), [k for k, d in docs.items() if not d.help.strip()]
