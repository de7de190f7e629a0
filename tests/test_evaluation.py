"""After-training evaluation: the before/after table, its defaults, and the default job as a demo end to end."""

import importlib.util
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from endprompt_ray.cli import extend as extend_main
from endprompt_ray.config.loader import load_config
from endprompt_ray.eval.compare import EvalReport, eval_lengths, format_comparison, run_suites, write_comparison

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def test_default_lengths_are_the_window_half_and_full_target():
    assert eval_lengths(load_config(None), original_window=256) == [256, 1024, 2048]
    cfg = load_config(None, ["method.target_length=65536", "method.physical_length=8192"])
    assert eval_lengths(cfg, original_window=8192) == [8192, 32768, 65536]
    assert eval_lengths(load_config(None, ["eval.lengths=[512, 300]"]), original_window=256) == [300, 512]


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3"])
def test_default_lengths_from_the_toy_base_for_every_rope_type(rope_type):
    """Read from the base model (window 256), not the exported config: dynamic NTK keeps its window there."""
    cfg = load_config(None, [f"rope.type={rope_type}"])
    assert eval_lengths(cfg) == [256, 1024, 2048]


def test_dynamic_ntk_scores_do_not_depend_on_what_ran_before(tmp_path):
    """transformers keeps a dynamic rotary module scaled for the longest call it has seen; each suite starts over."""
    import torch

    from endprompt_ray.eval.perplexity import PerplexitySettings, run_perplexity
    from endprompt_ray.models.loading import load_config as load_model_config
    from endprompt_ray.models.loading import load_model, load_tokenizer
    from endprompt_ray.rope.scaling import scaled_config

    cfg = load_config(None, ["rope.type=dynamic", "eval.suites=[ppl]", "eval.ppl_num_documents=2"])
    model = load_model("tiny-base", config=scaled_config(load_model_config("tiny-base"), 2048, cfg.rope)).eval()
    tokenizer = load_tokenizer("tiny-base")

    def long_call():  # what a passkey run at L leaves behind
        with torch.no_grad():
            model(input_ids=torch.ones(1, 2048, dtype=torch.long), position_ids=torch.arange(2048)[None])

    fresh = run_suites(cfg, model, tokenizer, [256, 1024], tmp_path / "a")["ppl"].ppl
    long_call()
    assert run_suites(cfg, model, tokenizer, [256, 1024], tmp_path / "b")["ppl"].ppl == fresh
    long_call()
    stale = run_perplexity(model, tokenizer, PerplexitySettings(lengths=[256, 1024], num_documents=2), tmp_path / "c")
    assert stale.ppl[256] != pytest.approx(fresh[256], rel=1e-3)  # without the reset: L's base at the window


def test_comparison_table_and_files(tmp_path):
    report = EvalReport(lengths=[256, 2048], labels={"base": "base", "trained": "endprompt (linear x8, 10 steps)"},
                        scores={"base": {"passkey": {256: 100.0, 2048: 0.0}, "ppl": {256: 1.5, 2048: 40.25}},
                                "trained": {"passkey": {256: 95.0, 2048: 62.5}, "ppl": {256: 1.6, 2048: 2.0}}})
    lines = format_comparison(report).splitlines()
    assert lines[0].split() == ["passkey", "%", "@256", "passkey", "%", "@2048", "PPL", "@256", "PPL", "@2048"]
    assert lines[1].split()[-4:] == ["100.0", "0.0", "1.50", "40.25"]
    assert lines[2].startswith("endprompt (linear x8, 10 steps)") and lines[2].split()[-4:] == ["95.0", "62.5",
                                                                                                 "1.60", "2.00"]
    assert lines[3] == ("passkey: the formats the shipped tiny-base was pretrained on (in-distribution for tiny-base "
                        "only; held out for tiny-base-recall)")
    assert len(lines) == 4
    report.scores["trained"]["ticket_qa"] = {256: 12.5, 2048: 0.0}
    lines = format_comparison(report).splitlines()
    assert lines[0].split()[6:9] == ["ticket_qa", "%", "@256"] and lines[2].split()[-4:-2] == ["12.5", "0.0"]
    assert lines[1].split()[-4:-2] == ["-", "-"]  # not scored on the base
    assert lines[4] == "ticket_qa: held out (no corpus of the project contains these formats)"
    files = write_comparison(report, tmp_path)
    assert files["comparison_plot"].read_bytes().startswith(PNG)
    assert json.loads(files["comparison_json"].read_text())["scores"]["trained"]["passkey"]["2048"] == 62.5


@pytest.mark.slow
def test_default_job_is_a_before_after_demo(local_ray, tmp_path, capsys):
    """The README's first command, shortened: the toy base, EndPrompt 256 -> 2048, the comparison in the summary."""
    spec = importlib.util.spec_from_file_location("extend", ROOT / "pipelines" / "extend.py")
    extend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extend)
    code = extend.main(["--set", f"run.output_dir={tmp_path}", "--set", "train.max_steps=6",
                        "--set", "eval.passkey_samples=1", "--set", "eval.ppl_num_documents=2"])
    out, err = capsys.readouterr()
    assert code == 0, out
    assert "Starting execution of Dataset" not in err  # Ray Data's progress lines stay in its log file
    rows = {line.split("  ")[0]: line for line in out.splitlines() if "@" not in line}
    assert any(r.startswith("base (no scaling)") for r in rows)
    assert any(r.startswith("rope only (linear x8)") for r in rows)
    assert any(r.startswith("endprompt (linear x8, 6 steps)") for r in rows)
    assert "library logs:" in out and (tmp_path / "endprompt-tiny" / "job.log").exists()
    comparison = json.loads((tmp_path / "endprompt-tiny" / "eval" / "comparison.json").read_text())
    assert set(comparison["scores"]) == {"base", "rope_only", "trained"}
    assert comparison["scores"]["base"]["passkey"]["256"] >= 80  # the toy base retrieves at its window
    assert {"locker", "ticket_qa"} <= set(comparison["scores"]["trained"])  # the held-out formats are reported
    assert "locker, ticket_qa: held out" in out
    assert "passkey: the formats the shipped tiny-base was pretrained on" in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("endprompt-ray").experiment_id])
    metrics = run.data.metrics
    assert {"passkey/acc/2048", "ppl/2048", "compare/base/passkey/256", "compare/rope_only/ppl/2048"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/comparison.png", "eval/comparison.txt"} <= artifacts


@pytest.mark.slow
def test_the_held_out_preset_extends_the_recall_base_on_its_own_corpus(local_ray, tmp_path, capsys):
    """`--config tiny-heldout`, shortened: tiny-base-recall, EndPrompt's tail prompt on the recall extension corpus
    (every document long enough for a far tail: nothing skipped), every probe held out."""
    code = extend_main(["--config", "tiny-heldout", "--set", f"run.output_dir={tmp_path}", "--set",
                        "train.max_steps=4", "--set", "data.demo_documents=64", "--set", "eval.compare=false",
                        "--set", "eval.passkey_samples=1", "--set", "eval.ppl_num_documents=2"])
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert "data: 64 records -> 64 documents -> 64 samples (0 packed); nothing skipped" in out
    run_dir = tmp_path / "endprompt-tiny-heldout"
    recorded = json.loads((run_dir / "model" / "endprompt.json").read_text())["config"]
    assert recorded["model"]["name_or_path"] == "tiny-base-recall" and recorded["method"]["prompt_source"] == "tail"
    assert recorded["data"]["demo_corpus"] == "recall"
    assert json.loads((run_dir / "model" / "config.json").read_text())["vocab_size"] == 2048
