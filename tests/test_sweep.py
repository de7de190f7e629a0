"""Ray Tune sweep: one trial = one fine-tune + RULER run, one MLflow run per trial."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from endprompt_ray.config import ConfigError
from endprompt_ray.sweep import load_sweep

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("search_anchor", ROOT / "tune_spaces" / "search_anchor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_sweep_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"space": {"method.anchor_ofset": {"grid": [0, 1]}}}))
    with pytest.raises(ConfigError, match="unknown config key method.'anchor_ofset'"):
        load_sweep(bad)
    bad.write_text(yaml.safe_dump({"space": {"method.anchor_offset": {"normal": [0, 1]}}}))
    with pytest.raises(ConfigError, match="unknown distribution 'normal'"):
        load_sweep(bad)
    bad.write_text(yaml.safe_dump({"spaces": {}}))
    with pytest.raises(ConfigError, match="unknown key 'spaces'"):
        load_sweep(bad)
    assert _script().main(["--space", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.slow
def test_tiny_sweep_runs_two_trials_with_ruler(local_ray, tmp_path, capsys):
    code = _script().main(["--set", f"run.output_dir={tmp_path}", "--set", "train.max_steps=2",
                           "--set", "train.checkpoint_every=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    csv_path = tmp_path / "sweeps" / "anchor-sweep-tiny-results.csv"
    rows = csv_path.read_text().strip().splitlines()
    assert len(rows) == 3 and "config/method.anchor_offset" in rows[0]
    assert (tmp_path / "sweeps" / "anchor-sweep-tiny-ruler_avg.png").stat().st_size > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("endprompt-ray")
    runs = client.search_runs([experiment.experiment_id], "tags.`endprompt.sweep` = 'anchor-sweep-tiny'")
    assert len(runs) == 2
    assert {r.data.params["method.anchor_offset"] for r in runs} == {"0", "1024"}
    for run in runs:
        assert "ruler/avg" in run.data.metrics and "train/loss" in run.data.metrics
