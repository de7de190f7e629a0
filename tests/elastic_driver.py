"""Driver of the elastic test (test_elastic.py), run in its own process because it needs its own Ray cluster: two
1-CPU nodes on this machine, the second added once training on the first has saved two checkpoints. With
`train.num_workers=[1, 2]` Ray Train starts on 1 worker and then grows the group to 2 from a checkpoint. Then the
same run on a fixed 2 workers, to 2 steps past that checkpoint, as the reference.

usage: python tests/elastic_driver.py OUT_DIR KEY=VALUE...   (writes OUT_DIR/result.json)
"""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from endprompt_ray.config.loader import load_config
from endprompt_ray.jobs.extend import run_extend
from endprompt_ray.training.resume import latest_progress


def main(out_dir: Path, overrides: list[str]) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:  # shut down however the run ends: a cluster left behind is what the next `ray.init()` on this host joins
        ray.init(address=cluster.address, log_to_driver=False)
        run(out_dir, overrides, cluster)
    finally:
        ray.shutdown()
        cluster.shutdown()


def run(out_dir: Path, overrides: list[str], cluster: Cluster) -> None:
    cfg = load_config(None, [f"run.output_dir={out_dir}", *overrides])
    outcome: dict = {}

    def train() -> None:  # Ray Train runs from a thread too (as under Tune); Ray adds nodes from the main one
        try:
            outcome["result"] = run_extend(cfg)
        except BaseException as err:  # re-raised below, in the main thread
            outcome["error"] = err

    started = time.perf_counter()
    training = threading.Thread(target=train, daemon=True)
    training.start()
    # the second checkpoint on storage means Ray Train has registered the first: a resize restores one of them (a
    # resize decided while a report is still in flight restores the previous registered checkpoint, or none)
    while training.is_alive() and ((saved := latest_progress(cfg.storage_path, cfg.run.name)) is None
                                   or saved.step < 2 * cfg.train.checkpoint_every):
        time.sleep(0.2)
    if training.is_alive():
        cluster.add_node(num_cpus=1)
        outcome["after_checkpoint_step"], outcome["added_at_s"] = saved.step, round(time.perf_counter() - started, 1)
    training.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    # the reference: the same run on a fixed 2 workers, to 2 steps past the step the grown group restored
    restored = [int(m.step) for m in MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id,
                                                                                         "resume/step")]
    reference = run_extend(load_config(None, [f"run.output_dir={out_dir}", *overrides, "run.name=reference",
                                              "train.num_workers=2", f"train.max_steps={max(restored, default=0) + 2}"]))
    (out_dir / "result.json").write_text(json.dumps({
        "run_id": result.mlflow_run_id, "reference_run_id": reference.mlflow_run_id, "tracking_uri": result.tracking_uri,
        "final_step": result.final_metrics["step"], "after_checkpoint_step": outcome.get("after_checkpoint_step"),
        "added_at_s": outcome.get("added_at_s"), "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
