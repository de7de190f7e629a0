"""pipelines/evaluate.py with --suites: passkey, report_code and perplexity on a model directory, tables, MLflow."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli_suites", ROOT / "pipelines" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_suites(cli, tiny_dir, tmp_path, capsys, one_thread, mlflow_uri):
    import mlflow

    out = tmp_path / "out"
    code = cli.main(["--model", tiny_dir, "--suites", "passkey,report_code,ppl", "--lengths", "256,512",
                     "--samples", "1", "--passkey-depths", "0,1", "--ppl-num-documents", "2", "--batch-size", "2",
                     "--output", str(out), "--mlflow-uri", mlflow_uri, "--run-name", "probes"])
    printed = capsys.readouterr().out
    assert code == 0 and "RULER" not in printed
    assert "depth 100%" in printed and "report_code" in printed and "Perplexity" in printed
    for folder, files in {"passkey": ["summary.json", "predictions.jsonl", "passkey_heatmap.png"],
                          "report_code": ["summary.json", "report_code_heatmap.png"],
                          "perplexity": ["summary.json", "windows.jsonl", "ppl.png"]}.items():
        assert all((out / folder / f).exists() for f in files), folder
    assert json.loads((out / "passkey" / "summary.json").read_text())["samples"] == 4  # 2 lengths x 2 depths

    (run,) = mlflow.search_runs(experiment_names=["endprompt-ray-eval"], output_format="list")
    assert run.info.run_name == "probes" and run.data.params["suites"] == "passkey,report_code,ppl"
    assert {"passkey/acc/256", "passkey/acc/512", "passkey/avg", "report_code/acc/512", "ppl/256", "ppl/512",
            "ppl_tail/512"} <= set(run.data.metrics)


def test_perplexity_from_a_file_and_bad_suites(cli, tiny_dir, tmp_path, capsys, one_thread):
    from endprompt_ray.corpora.reports import generate_documents

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"text": t}) + "\n" for t in generate_documents(3, seed=9)))
    assert cli.main(["--model", tiny_dir, "--suites", "ppl", "--lengths", "64", "--ppl-documents", str(held_out),
                     "--ppl-tail-tokens", "8", "--output", str(tmp_path / "out")]) == 0
    assert f"3 document(s) from {held_out}" in capsys.readouterr().out

    assert cli.main(["--model", tiny_dir, "--suites", "ruler,needles"]) == 2
    assert "unknown suite(s) needles in --suites" in capsys.readouterr().err
    assert cli.main(["--model", tiny_dir, "--suites", "passkey", "--lengths", "100"]) == 2
    assert "passkey does not fit in length 100" in capsys.readouterr().err
    assert cli.parse_args(["--model", "x"]).suites == ["ruler"]  # RULER stays the default suite


def test_seed_default_matches_extend(cli):
    """pipelines/evaluate.py and run_extend (its default config, as pipelines/extend.py loads it) draw the same
    RULER and passkey samples by default."""
    from endprompt_ray.config.schema import ExtendConfig
    from endprompt_ray.config.loader import load_config
    from endprompt_ray.eval.compare import ruler_settings

    extend_seed = ruler_settings(load_config(None)).seed
    assert cli.parse_args(["--model", "x"]).seed == extend_seed == ExtendConfig().run.seed
    assert cli.parse_args(["--model", "x", "--seed", "7"]).seed == 7
