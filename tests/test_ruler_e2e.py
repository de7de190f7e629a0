"""End to end: the tiny model through run_ruler (in-process and on a Ray actor), the files, MLflow, the CLI."""

import importlib.util
import json
from pathlib import Path

import pytest

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.ruler import RulerSettings, log_ruler_to_mlflow, run_ruler
from endprompt_ray.eval.ruler.runner import _plan
from endprompt_ray.eval.ruler.sources import Sources

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def test_tiny_model_end_to_end(tiny_dir, demo_files, tmp_path, mlflow_uri, one_thread):
    import mlflow

    tasks = ["niah_single_1", "niah_single_2", "niah_multikey_2", "vt", "fwe", "qa_1"]
    settings = RulerSettings(lengths=[512, 1024], tasks=tasks, num_samples=2, batch_size=2,
                             essay_path=demo_files["essay"], squad_path=demo_files["squad"], progress=False)
    result = run_ruler(tiny_dir, None, settings, tmp_path / "ruler")

    ran = ["niah_single_1", "niah_single_2", "niah_multikey_2", "fwe", "qa_1"]
    assert result.covered_tasks == ran and set(result.scores) == set(ran)
    assert "vt" in result.skipped and "too long for length 512, 1024" in result.skipped["vt"]
    assert result.skipped["vt"].endswith("tokens; no fitting draw in 20 tries)")  # its example alone is too long
    assert set(result.averages) == {512, 1024} and 0.0 <= result.overall <= 100.0
    assert all(0.0 <= s <= 100.0 for v in result.scores.values() for s in v.values())
    assert any("Paul Graham" in note for note in result.notes)

    files = result.files
    assert set(files) == {"predictions", "summary_csv", "summary_json", "niah_heatmap", "ruler_scores"}
    assert all(files[k].read_bytes().startswith(PNG) for k in ("niah_heatmap", "ruler_scores"))
    records = [json.loads(x) for x in files["predictions"].read_text().splitlines()]
    assert len(records) == len(ran) * 2 * 2
    assert all(r["prompt_tokens"] + r["tokens_to_generate"] <= r["length"] for r in records)
    summary = json.loads(files["summary_json"].read_text())
    assert summary["overall"] == result.overall and summary["skipped"]["vt"] == result.skipped["vt"]
    csv_rows = files["summary_csv"].read_text().splitlines()
    assert csv_rows[0] == "task,512,1024,average" and csv_rows[-1].startswith("average,")

    with mlflow.start_run() as run:
        log_ruler_to_mlflow(result)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert {"ruler/niah_single_1/512", "ruler/qa_1/1024", "ruler/avg/512", "ruler/avg/1024", "ruler/avg"} <= set(logged)
    assert logged["ruler/avg"] == result.overall
    artifacts = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "ruler")}
    assert {"niah_heatmap.png", "ruler_scores.png", "summary.csv", "summary.json"} <= artifacts


def test_cwe_at_4096_runs_and_reports_its_redraws(tiny_dir, tmp_path, mlflow_uri, one_thread):
    """With the tiny tokenizer most cwe draws cannot fit 4096; the task runs on a redraw and says so."""
    import mlflow

    settings = RulerSettings(lengths=[4096], tasks=["cwe"], num_samples=1, progress=False)
    result = run_ruler(tiny_dir, None, settings, tmp_path / "ruler")
    assert result.skipped == {} and list(result.scores["cwe"]) == [4096]
    (record,) = [json.loads(x) for x in result.files["predictions"].read_text().splitlines()]
    counts = {"requested": 1, "built": 1, "redrawn": 1, "redraws": record["draw"], "dropped": []}
    assert record["draw"] > 0 and result.draws == {"cwe": {4096: counts}}
    assert json.loads(result.files["summary_json"].read_text())["draws"] == {"cwe": {"4096": counts}}
    assert any(n.startswith("cwe @ 4096: 1 of 1 samples did not fit at their first random draw") for n in result.notes)
    with mlflow.start_run() as run:
        log_ruler_to_mlflow(result)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["ruler/redraws/cwe/4096"] == record["draw"] and logged["ruler/dropped/cwe/4096"] == 0


def test_in_memory_model_and_ray_actor_agree(tiny_dir, tiny_tokenizer, tmp_path, local_ray, one_thread):
    from endprompt_ray.models.loading import load_model

    settings = RulerSettings(lengths=[512], tasks=["fwe", "niah_single_1"], num_samples=1, progress=False)
    local = run_ruler(load_model(tiny_dir), tiny_tokenizer, settings, tmp_path / "local")
    settings.workers = 1
    remote = run_ruler(tiny_dir, None, settings, tmp_path / "ray")
    preds = [[json.loads(x)["raw_pred"] for x in r.files["predictions"].read_text().splitlines()]
             for r in (local, remote)]
    assert preds[0] == preds[1] and local.scores == remote.scores
    with pytest.raises(EvalInputError, match="needs a model directory"):
        run_ruler(load_model(tiny_dir), tiny_tokenizer, settings, tmp_path / "x")


def test_bad_inputs(tiny_dir, tiny_tokenizer, tmp_path):
    from endprompt_ray.models.loading import load_model

    with pytest.raises(EvalInputError, match="task niah_single_2 needs an essay corpus"):
        run_ruler(tiny_dir, None, RulerSettings(lengths=[1024], tasks=["niah_single_2"]), tmp_path)
    with pytest.raises(EvalInputError, match="unknown RULER task 'needle'"):
        run_ruler(tiny_dir, None, RulerSettings(lengths=[1024], tasks=["needle"]), tmp_path)
    with pytest.raises(EvalInputError, match="lengths must be positive integers"):
        run_ruler(tiny_dir, None, RulerSettings(lengths=[0]), tmp_path)
    with pytest.raises(EvalInputError, match="no RULER task can run.*too long for length 128"):
        run_ruler(tiny_dir, None, RulerSettings(lengths=[128], progress=False), tmp_path)
    with pytest.raises(EvalInputError, match="needs its tokenizer"):
        run_ruler(load_model(tiny_dir), None, RulerSettings(lengths=[512], tasks=["fwe"]), tmp_path)
    bare = tmp_path / "no_tokenizer"
    load_model(tiny_dir).save_pretrained(bare)
    with pytest.raises(EvalInputError, match="cannot load a tokenizer"):
        run_ruler(str(bare), None, RulerSettings(lengths=[512], tasks=["fwe"]), tmp_path)

    runnable, skipped = _plan(RulerSettings(lengths=[4096]), Sources())  # default: what can run, notes for the rest
    assert runnable == ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe"]
    assert set(skipped) == {"niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue",
                            "niah_multiquery", "qa_1", "qa_2"}
    assert "set squad_path (--squad)" in skipped["qa_1"] and "Paul Graham" in skipped["niah_single_2"]


def test_cli(tiny_dir, tmp_path, capsys, one_thread, mlflow_uri):
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "pipelines" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "out"
    code = cli.main(["--model", tiny_dir, "--lengths", "512", "--tasks", "niah_single_1", "--samples", "1",
                     "--output", str(out), "--mlflow-uri", mlflow_uri, "--run-name", "cli"])
    printed = capsys.readouterr().out
    assert code == 0 and "niah_single_1" in printed and "overall" in printed
    assert (out / "ruler" / "summary.json").exists()
    import mlflow

    (run,) = mlflow.search_runs(experiment_names=["endprompt-ray-eval"], output_format="list")
    assert run.info.run_name == "cli" and "ruler/niah_single_1/512" in run.data.metrics
    assert cli.main(["--model", tiny_dir, "--tasks", "nope"]) == 2
    assert "unknown RULER task 'nope'" in capsys.readouterr().err
