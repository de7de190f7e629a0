"""benchmarks/gpu_check.py in its CPU mode, run as the GPU image runs it: Ray, MLflow and DeepSpeed unimportable.

Speeds are not checked (they mean nothing here); the JSON's fields, the sample layouts and the attention result are:
the training call's segment-2 logits match a KV-cache reference, and the same call without the all-ones mask does not.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
BLOCKED = "import sys; sys.modules['ray'] = sys.modules['mlflow'] = sys.modules['deepspeed'] = None"
P, L = 128, 2048  # the CPU shapes
LAYOUTS = ["endprompt_template_fixed", "endprompt_template_random", "endprompt_tail_fixed", "endprompt_tail_random",
           "pose"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    code = (f"{BLOCKED}; import runpy; sys.argv = ['gpu_check.py', '--cpu', '--out', {str(out)!r}]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_the_run_completes_without_ray_mlflow_or_deepspeed(report):
    data, md = report
    assert data["mode"] == "cpu" and data["complete"] and data["skipped"] == [] and data["errors"] == []
    assert data["environment"]["deepspeed"].startswith("not importable")
    assert data["sections"]["peak"]["tflops"] > 0
    assert "| endprompt_tail_random | float32 |" in md and "| full_length_512 | 512 |" in md
    assert "| ruler_vt | 1024 |" in md


def test_segment2_sees_segment1_in_the_training_call_and_not_without_the_mask(report):
    results = report[0]["sections"]["attention"]["results"]
    assert sorted(results) == sorted(f"{layout}/float32" for layout in LAYOUTS)
    for r in results.values():
        assert r["max_abs_diff"] < 1e-4, r
        assert r["max_abs_diff_without_mask"] > 1e-2, r  # segment 1 cut off: the logits move visibly
        assert r["within_tolerance"] and r["trap_shown_without_mask"], r
        assert r["sdpa_kernels"] and all("scaled_dot_product" in k for k in r["sdpa_kernels"]), r
        assert r["segment1_tokens"] + r["segment2_tokens"] == P


def test_the_checked_samples_have_the_method_layouts(report):
    results = report[0]["sections"]["attention"]["results"]
    for source, b in (("tail", 20), ("template", None)):
        fixed = results[f"endprompt_{source}_fixed/float32"]
        b = b or fixed["segment2_tokens"]
        # fixed anchor: segment 1 at 0..P-b-1, segment 2 ends at L - 1, so the ids jump by L - P + 1
        assert fixed["segment2_tokens"] == b and fixed["segment1_tokens"] == P - b
        assert fixed["position_jump"] == L - P + 1
        random = results[f"endprompt_{source}_random/float32"]
        assert random["segment2_tokens"] == b and 1 <= random["position_jump"] <= L - P + 1
    pose = results["pose/float32"]
    assert 1 <= pose["segment1_tokens"] <= (P + 1) // 2 and pose["position_jump"] >= 1  # official PoSE's cut


def test_training_rows_ratios_and_planner_note(report):
    training = report[0]["sections"]["training"]
    rows = training["results"]
    assert {name: r["sequence_length"] for name, r in rows.items()} == {
        "endprompt": P, "contiguous": P, "full_length_256": 256, "full_length_512": 512}
    for r in rows.values():
        assert r["seconds_per_step"] > 0 and r["tokens_per_s"] > 0 and r["achieved_tflops"] > 0
        assert len(r["losses"]) == 3 and all(loss > 0 for loss in r["losses"])
        assert r["max_allocated_gib"] is None  # only measured on a GPU
        assert "DeepSpeed cannot be imported" in r["planner"]["missing"]
    assert training["ratios"]["longest_full_length"] == "full_length_512"
    assert {"endprompt_over_contiguous_time", "full_length_over_endprompt_time"} <= set(training["ratios"])


def test_evaluation_times_the_runners_prompts(report):
    evaluation = report[0]["sections"]["evaluation"]
    assert "random" in evaluation["note"]
    rows = evaluation["results"]
    assert sorted(rows) == ["passkey@1024", "ruler_niah_single_1@1024", "ruler_vt@1024"]
    new_tokens = {"passkey": 10, "ruler_niah_single_1": 128, "ruler_vt": 30}  # the runners' own settings
    for r in rows.values():
        assert r["new_tokens"] == new_tokens[r["runner"]]
        assert r["prompt_tokens"] + r["new_tokens"] <= r["length"] and r["prompt_tokens"] > 0.8 * r["length"]
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0


def _module():
    if "gpu_check" not in sys.modules:  # registered first: its dataclasses look their module up there
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


def test_the_planner_prediction_fills_the_row_where_deepspeed_imports():
    pytest.importorskip("deepspeed")
    gpu_check = _module()
    from endprompt_ray.models.loading import load_tokenizer

    model = gpu_check.build_model(gpu_check.CPU, load_tokenizer("tiny-base"), torch.device("cpu"), torch.float32)
    plan = gpu_check.prediction(model, 512, gpu_check.CPU, torch.device("cpu"))
    assert "missing" not in plan and plan["peak_gib"] > 0 and plan["step_time_s"] is None  # no GPU: memory only
    assert set(plan["breakdown_gib"]) >= {"weights", "gradients", "optimizer states", "activations"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_without_a_gpu_the_plain_command_says_to_use_cpu_mode(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _module().main(["--out", "unused"])
    assert exit_info.value.code == 2 and "run with --cpu" in capsys.readouterr().err


def test_a_run_cut_short_keeps_what_it_measured(tmp_path):
    data = _module().main(["--cpu", "--out", str(tmp_path), "--total-cap", "0.001"])  # inside the first section
    assert not data["complete"]
    assert data["skipped"][-1] == {"what": "the remaining sections", "why": "total time cap of 0.001 s reached"}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["skipped"] == data["skipped"]
    assert "skipped the remaining sections" in (tmp_path / "gpu_check.md").read_text()


def test_a_failed_row_is_recorded_and_shown(tmp_path):
    gpu_check = _module()
    run = gpu_check.Run(tmp_path, gpu_check.CPU, "cpu")
    run.section("attention")["results"] = {"pose/float32": {"layout": "pose", "dtype": "float32",
                                                            **run.failed("attention pose", ValueError("no jump"))}}
    run.save()
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["errors"][0]["what"] == "attention pose" and saved["errors"][0]["error"] == "ValueError: no jump"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| pose | float32 | ValueError: no jump |" in md and "- failed attention pose: ValueError: no jump" in md
