"""Smoke runs of the cost benchmarks at tiny settings: they run end to end and write well-formed JSON.
No timing is asserted: these machines are too noisy for that, and the figures belong in benchmarks/README.md."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_throughput_writes_its_figures(local_ray, tmp_path):
    out = tmp_path / "data.json"
    report = _load("data_throughput").main(["--docs", "120", "--output", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["corpus_tokens"] > 0 and report["data_report"]["documents"] == 120
    assert report["samples"] == report["data_report"]["samples"] > 0
    for side in ("raw_tokenizers", "ray_data_pipeline"):
        assert report[side]["seconds"] > 0 and report[side]["tokens_per_s"] > 0
    assert report["ratio"] > 0 and isinstance(report["target"]["met"], bool)


@pytest.mark.slow
def test_train_cost_writes_its_figures(local_ray, tmp_path):
    out = tmp_path / "train.json"
    report = _load("train_cost").main(["--hidden", "64", "--layers", "1", "--steps", "2", "--warmup", "1",
                                       "--physical-length", "64", "--workdir", str(tmp_path / "runs"),
                                       "--output", str(out)])
    assert json.loads(out.read_text()) == report
    assert set(report["methods"]) == {"endprompt", "contiguous", "full_length"}
    assert report["methods"]["full_length"]["sequence_length"] == 8 * report["methods"]["endprompt"][
        "sequence_length"] == 512
    for figures in report["methods"].values():
        assert figures["measured_steps"] == 1
        assert figures["seconds_per_step"] > 0 and figures["tokens_per_s"] > 0 and figures["peak_memory_mb"] >= 0
    assert set(report["ratios"]) == {"endprompt_time_overhead_vs_contiguous", "full_length_over_endprompt_time",
                                     "full_length_over_endprompt_memory"}
    assert len(report["targets"]) == 3 and all(isinstance(t["met"], bool) for t in report["targets"])
    assert "| endprompt |" in out.with_suffix(".md").read_text()
