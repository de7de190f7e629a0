"""Elastic training on a real 2-node Ray cluster (two raylets on this machine, tests/elastic_driver.py): a run with
train.num_workers=[1, 2] starts on the one node there is, and when the second joins Ray Train grows the worker group
from the latest checkpoint. The global batch stays 4 samples on either count."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray._common.utils import reset_ray_address
from ray._private.utils import read_ray_address, write_ray_address

from endprompt_ray.training.resume import latest_progress

pytestmark = pytest.mark.slow
DRIVER = Path(__file__).with_name("elastic_driver.py")


def test_an_elastic_run_starts_on_fewer_workers_and_grows_when_a_node_joins(tmp_path):
    overrides = ["run.name=elastic", "eval.enabled=false", "model.name_or_path=tiny", "data.demo_documents=400",
                 "train.num_workers=[1, 2]", "train.cpus_per_worker=1", "train.micro_batch_size=2",
                 "train.max_steps=40", "train.checkpoint_every=2", "train.report_every=1",
                 "train.elastic_resize_interval_s=1", "train.learning_rate=3e-3", "train.warmup_steps=1"]
    _run_driver(tmp_path, overrides)
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["final_step"] == 40

    client = MlflowClient(out["tracking_uri"])

    def history(key):  # in the order logged: a restored group logs the steps after its checkpoint again
        points = sorted(client.get_metric_history(out["run_id"], key), key=lambda m: (m.timestamp, m.step))
        return [(int(m.step), m.value) for m in points]

    workers = history("train/workers")
    ones = [step for step, n in workers if n == 1]
    twos = [step for step, n in workers if n == 2]
    assert len(ones) + len(twos) == len(workers) and workers.index((twos[0], 2.0)) == len(ones)  # 1, then 2
    assert ones == list(range(1, ones[-1] + 1)) and twos == list(range(twos[0], 41))
    # the node joined after the second checkpoint; the grown group restored one of the 1-worker checkpoints (its
    # ZeRO state re-partitioned over 2 workers) and went on from the step after it
    assert out["after_checkpoint_step"] >= 4
    (resumed,) = [step for step, _ in history("resume/step")]
    assert 2 <= resumed <= ones[-1] and resumed % 2 == 0 and twos[0] == resumed + 1
    # every step trained on 4 samples of P = 256 tokens: 1 worker x 2 micro-batches of 2, or 2 workers x 1
    for (_, speed), (_, seconds) in zip(history("train/tokens_per_s"), history("train/step_time_s")):
        assert speed * seconds == pytest.approx(4 * 256, rel=1e-6)
    # every loss up to 2 steps past the restore, on 1 worker (accumulation 2) or 2, is the fixed 2-worker run's
    want = {int(m.step): m.value for m in client.get_metric_history(out["reference_run_id"], "train/loss")}
    assert sorted(want) == list(range(1, resumed + 3))
    compared = [(step, loss) for step, loss in history("train/loss") if step in want]
    assert {step for step, _ in compared} == set(want)
    for step, loss in compared:
        assert loss == pytest.approx(want[step], rel=1e-3), step
    assert latest_progress(str(tmp_path / "ray_results"), "elastic").world_size == 2


def _run_driver(out_dir: Path, overrides: list[str], timeout_s: float = 900) -> None:
    """The driver in its own process group, so that a driver that times out is stopped with its cluster's
    processes, and Ray's pointer to the latest local cluster (which a plain `ray.init()` joins) is put back."""
    pointer = read_ray_address()
    driver = subprocess.Popen([sys.executable, str(DRIVER), str(out_dir), *overrides], start_new_session=True)
    try:
        assert driver.wait(timeout=timeout_s) == 0, f"the elastic driver failed (exit code {driver.returncode})"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if pointer is None:
            reset_ray_address()
        elif read_ray_address() != pointer:
            write_ray_address(pointer)
