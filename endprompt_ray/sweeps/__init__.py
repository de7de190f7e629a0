"""Ray Tune sweeps over EndPrompt's settings: one trial = one `run_extend` (fine-tune + evaluation).

spec.py     the sweep file: space (with conditional groups), search, scheduler, probe; checked on the driver
paths.py    every path pinned to the launch directory; tracking URIs every trial's node can reach
search.py   Tune's param space, searchers (grid/random, Optuna, HyperOpt), ASHA, trial resources
trial.py    the trial function: Ray Train V2 inside a Tune trial, reporting to Tune through TuneReportCallback
probe.py    the passkey probe during training that early stopping acts on
runs.py     MLflow: a parent run per sweep, a nested child per trial, honest statuses
results.py  the sorted table, the plot per swept dimension, the best config as an extend.py YAML
runner.py   start or continue a sweep, end to end
"""

from endprompt_ray.sweeps.runner import SweepOutcome, run_sweep
from endprompt_ray.sweeps.spec import ConfigError, SweepSpec, base_config, dimensions, load_sweep

__all__ = ["ConfigError", "SweepOutcome", "SweepSpec", "base_config", "dimensions", "load_sweep", "run_sweep"]
