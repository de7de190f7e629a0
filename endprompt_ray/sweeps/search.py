"""The Tune side of a sweep spec: the param space, the search algorithm, the scheduler and the trial resources."""

from __future__ import annotations

import math

from ray import tune

from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.errors import ConfigError
from endprompt_ray.sweeps.spec import CATEGORICAL, Dimension, SweepSpec

INSTALL = {"optuna": "optuna", "hyperopt": "hyperopt"}


def param_space(dims: list[Dimension], search: str) -> dict:
    """Grid values are crossed by the default (grid) search; the other searches draw them as choices."""
    space = {}
    for dim in dims:
        if dim.kind in CATEGORICAL:
            space[dim.key] = tune.grid_search(dim.values) if dim.kind == "grid" and search == "grid" \
                else tune.choice(dim.values)
        else:
            space[dim.key] = getattr(tune, dim.kind)(*dim.values)
    return space


def trial_count(dims: list[Dimension], spec: SweepSpec) -> int:
    if spec.search != "grid":
        return spec.num_samples
    return spec.num_samples * math.prod(len(d.values) for d in dims if d.kind == "grid")


def search_algorithm(spec: SweepSpec):
    """None for grid/random (Tune's variant generator); else the model-based searcher, which sees only the final
    results (a trial's intermediate reports carry the probe, not the sweep metric)."""
    if spec.search in ("grid", "random"):
        return None
    try:
        if spec.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(metric=spec.metric, mode=spec.mode, seed=spec.seed)
        else:
            from ray.tune.search.hyperopt import HyperOptSearch

            searcher = HyperOptSearch(metric=spec.metric, mode=spec.mode, random_state_seed=spec.seed)
    except (ImportError, AssertionError) as err:
        raise ConfigError(f"search={spec.search} needs the {INSTALL[spec.search]} package: "
                          f"pip install {INSTALL[spec.search]} (or the project's `tune` extra); "
                          "or use search=grid / random") from err
    return FinalResultsOnly(searcher)


def _limiter():
    from ray.tune.search import ConcurrencyLimiter

    return ConcurrencyLimiter


class FinalResultsOnly(_limiter()):
    """Passes a searcher only the results that carry its metric (the trial's last one), not the training reports."""

    def __init__(self, searcher) -> None:
        super().__init__(searcher, max_concurrent=10_000)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.searcher.metric in result:
            super().on_trial_result(trial_id, result)


def scheduler(spec: SweepSpec, max_steps: int):
    """ASHA over training steps on a metric reported during training; None: every trial runs to the end."""
    s = spec.scheduler
    if s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    if s.grace_period >= max_steps:
        raise ConfigError(f"scheduler.grace_period={s.grace_period} must be below train.max_steps={max_steps}, "
                          "else no trial can be stopped early")
    # ASHA also judges at a rung on max_t itself; max_t one step short of the end keeps every rung before the
    # last step, so a trial that trains to the end is always evaluated.
    return ASHAScheduler(time_attr="step", metric=s.metric, mode=s.mode, max_t=max_steps - 1,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor, stop_last_trials=False)


def trial_resources(spec: SweepSpec, cfg: ExtendConfig) -> dict:
    """What one trial holds at once: its function, its Train workers and one data task beside them."""
    workers = cfg.max_workers
    out = {"CPU": spec.trial_cpus + workers * cfg.train.cpus_per_worker + cfg.data.cpus_per_task}
    if cfg.train.use_gpu:
        out["GPU"] = float(workers)
    return out


def concurrency(spec: SweepSpec, need: dict) -> int:
    """`max_concurrent_trials`, or for `auto` as many trials as the cluster's resources hold now (at least one;
    on an autoscaling cluster give the number you want)."""
    if spec.max_concurrent_trials != "auto":
        return int(spec.max_concurrent_trials)
    import ray

    have = ray.cluster_resources()
    fits = [math.floor(have.get(r, 0.0) / n + 1e-9) for r, n in need.items() if n > 0]
    return max(1, min(fits) if fits else 1)
