"""Smoke run of the mini-reproduction benchmark: it runs two arms end to end and writes well-formed output."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_minirepro_smoke(tmp_path):
    """Two arms on the passkey-control corpus (the demo corpus is every other end-to-end test's)."""
    out = tmp_path / "minirepro"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "minirepro.py"), "--steps", "3", "--seeds", "1",
                           "--arms", "rope_only,endprompt_tail_fixed", "--passkey-samples", "1",
                           "--corpus", "passkey-control", "--output", str(out), "--set", "eval.ppl_num_documents=2",
                           "--set", "eval.suites=[passkey,ppl]"],
                          check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "minirepro.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["rope_only", "endprompt_tail_fixed"]
    assert result["corpus"] == "passkey-control"
    control = (out / "passkey_control.jsonl").read_text().splitlines()
    assert len(control) == 3 * 4 * 2  # steps x micro-batch x workers: one epoch
    assert all(json.loads(line)["text"].endswith(".") and "The pass key is" in line for line in control)
    assert result["lengths"] == [256, 1024, 2048]
    for record in result["records"]:
        assert set(record["passkey"]) == {"256", "1024", "2048"}  # JSON keys
        assert all(0 <= v <= 100 for v in record["passkey"].values())
    assert (out / "minirepro.md").read_text().startswith("| arm | seeds | steps |")
    assert all((out / name).read_bytes().startswith(PNG) for name in ("minirepro_length.png", "minirepro_compute.png"))
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("endprompt-ray").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`endprompt.benchmark` = 'minirepro'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and parent.info.status == "FINISHED"
