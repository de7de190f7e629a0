"""One trial: the sampled values on top of the sweep's base config, then the same `run_extend` as the main job.

Ray Train V2 inside a Tune trial: the trial function launches its own TorchTrainer, and Tune's TuneReportCallback
(a Train callback) forwards every `ray.train.report` from the workers to Tune, so a scheduler sees the training
metrics and the probe as they come. The evaluation's scores are reported once, at the end, with `final=1`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from endprompt_ray.config.loader import config_from_dict
from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.eval.compare import final_variant
from endprompt_ray.jobs.extend import run_extend
from endprompt_ray.sweeps.paths import check_trial_node
from endprompt_ray.sweeps.spec import Dimension, SweepSpec, apply, overrides_of

SWEEP_TAG, TRIAL_TAG = "endprompt.sweep", "endprompt.trial_id"
FINAL = "final"  # set in a trial's last result, after its evaluation: absent means stopped before the end


@dataclass
class TrialPlan:
    """Everything a trial needs, built on the driver (plain data: it travels to any node)."""
    spec: SweepSpec
    dims: list[Dimension]
    base: dict  # the base config, paths pinned
    launch_dir: str
    parent_run_id: str
    driver_node: str

    def config(self, params: dict, trial_id: str | None = None) -> ExtendConfig:
        name = f"{self.spec.name}-{trial_id}" if trial_id else None
        return apply(config_from_dict(self.base), overrides_of(self.dims, params), where=f"trial {trial_id}",
                     run_name=name, launch_dir=Path(self.launch_dir))

    def probe_settings(self) -> dict | None:
        probe = self.spec.probe
        return None if probe is None else {"every": probe.every, "samples": probe.samples,
                                           "depths": list(probe.depths), "length": probe.length}


def make_trial(plan: TrialPlan):
    def run_trial(params: dict) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_id = tune.get_context().get_trial_id()
        cfg = plan.config(params, trial_id)
        check_trial_node(cfg.tracking_uri, plan.driver_node)
        tags = {"mlflow.parentRunId": plan.parent_run_id, SWEEP_TAG: plan.spec.name, TRIAL_TAG: trial_id}
        result = run_extend(cfg, mlflow_tags=tags, train_callbacks=[TuneReportCallback()],
                            probe=plan.probe_settings())
        tune.report({**final_metrics(cfg, result), "step": cfg.train_steps, FINAL: 1})

    return run_trial


def final_metrics(cfg: ExtendConfig, result) -> dict:
    """The trained model's scores under the names a sweep's `metric` uses."""
    out = {"loss": float(result.final_metrics.get("loss", math.nan)), "mlflow_run_id": result.mlflow_run_id,
           "wall_time_s": result.wall_time_s}
    out.update({k: float(v) for k, v in result.final_metrics.items() if k.startswith("probe/")})  # the last probe
    scores = result.evaluation.scores.get(final_variant(cfg), {}) if result.evaluation else {}
    target = cfg.method.target_length
    for suite, name in (("passkey", "passkey/acc"), ("ppl", "ppl"), ("ruler", "ruler")):
        for length, value in scores.get(suite, {}).items():
            out[f"{name}/{length}"] = float(value)
        if target in scores.get(suite, {}):
            out[f"{name}/target"] = float(scores[suite][target])
    if scores.get("passkey"):
        out["passkey/avg"] = sum(scores["passkey"].values()) / len(scores["passkey"])
    if result.ruler:
        out["ruler/avg"] = float(result.ruler["overall"])
    return out
