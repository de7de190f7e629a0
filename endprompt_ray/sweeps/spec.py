"""The sweep file: what to vary, how to search, what to optimise; checked on the driver before any trial starts.

A space maps a dotted config key to one distribution, or a group name (no dot) to options that each set several keys
together, which is how conditional dimensions are written (a random anchor has no offset to cross with):

    space:
      anchor: {grid: [{method.anchor: random}, {method.anchor: fixed, method.anchor_offset: 0}]}
      method.prompt_source: {grid: [template, tail]}
      train.learning_rate: {loguniform: [1.0e-4, 1.0e-3]}
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from endprompt_ray.config.loader import build_typed, config_from_dict, load_config
from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.errors import ConfigError
from endprompt_ray.sweeps.paths import pin_paths

SEARCHES = ("grid", "random", "optuna", "hyperopt")
SCHEDULERS = ("none", "asha")
CATEGORICAL = ("grid", "choice")
# name -> number of arguments: [lo, hi] or [lo, hi, q]
NUMERIC = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "lograndint": 2,
           "qrandint": 3}
# Every trial must log to the sweep's MLflow database and keep its outputs under the sweep's folders.
FIXED_PER_SWEEP = ("run.name", "run.output_dir", "run.storage_path", "tracking.tracking_uri", "tracking.experiment")
METRIC = re.compile(r"^(passkey/acc|ppl|ruler)/(\d+|target)$|^(passkey/avg|ruler/avg|loss)$")
TRAINING_METRICS = ("loss", "probe/nll", "probe/acc")  # reported during training, what ASHA can act on


@dataclass
class Dimension:
    key: str  # a dotted config key, or a group name
    kind: str  # grid | choice | one of NUMERIC
    values: list  # categorical values (for a group: the option labels), or the numeric arguments
    options: dict = field(default_factory=dict)  # group: label -> {dotted key: value}

    @property
    def is_group(self) -> bool:
        return bool(self.options)

    def overrides(self, value) -> dict:
        """The config keys a sampled value sets."""
        return dict(self.options[value]) if self.is_group else {self.key: value}


@dataclass
class ProbeSpec:
    """A quick passkey probe on held-out samples during training (teacher-forced loss and exact match of the key)."""
    every: int = field(default=50, metadata={
        "help": "steps; the probe runs at the first report at or after each multiple"})
    samples: int = field(default=2, metadata={"help": "passkey samples per depth"})
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata={
        "help": "needle depths"})
    length: int | None = field(default=None, metadata={"help": "prompt length; None: method.target_length"})


@dataclass
class SchedulerSpec:
    type: str = field(default="none", metadata={"help": "none, or asha (stops weaker trials early)"})
    metric: str = field(default="probe/nll", metadata={
        "help": "a metric reported during training: loss, probe/nll or probe/acc"})
    mode: str = field(default="min", metadata={"help": "min or max"})
    grace_period: int = field(default=100, metadata={"help": "training steps before a trial can be stopped"})
    reduction_factor: float = field(default=2, metadata={"help": "ASHA keeps 1 / reduction_factor of the trials"})


@dataclass
class SweepSpec:
    name: str = field(default="anchor-sweep", metadata={"help": "names the sweep's folders and MLflow runs"})
    base_config: str | None = field(default=None, metadata={
        "help": "a preset's name or a YAML path; None: the built-in CPU default"})
    overrides: list[str] = field(default_factory=list, metadata={"help": "a.b=c settings fixed for every trial"})
    space: dict = field(default_factory=dict, metadata={
        "help": "dotted config key (or group name) -> one distribution, e.g. {grid: [a, b]}"})
    metric: str = field(default="passkey/acc/target", metadata={
        "help": "reported once per trial, after its evaluation: passkey/acc/<length>, ppl/<length>, ruler/..."})
    mode: str = field(default="max", metadata={"help": "max or min of the metric"})
    search: str = field(default="grid", metadata={
        "help": "grid (values crossed), random (every dimension drawn), optuna (TPE) or hyperopt"})
    num_samples: int = field(default=1, metadata={"help": "grid: repeats of the grid; otherwise: trials"})
    max_concurrent_trials: int | str = field(default="auto", metadata={
        "help": "auto: as many as the cluster's CPUs/GPUs hold"})
    trial_cpus: float = field(default=0.1, metadata={
        "help": "CPUs of the trial function itself; its Ray Train workers reserve their own"})
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec, metadata={"help": "early stopping"})
    probe: ProbeSpec | None = field(default=None, metadata={
        "help": "a passkey probe during training, e.g. {every: 50}; None: none"})
    seed: int = field(default=0, metadata={"help": "the searcher's seed"})

    def fingerprint(self) -> dict:
        """What must not change when a sweep of this name is continued."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("max_concurrent_trials",)}


def load_sweep(path: str | Path, extra_overrides: list[str] | None = None, **changes) -> SweepSpec:
    """Read, complete and check a sweep file. `changes`: command-line values for top-level keys (None: keep)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found; the shipped ones are in endprompt_ray/presets/sweeps/")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep file {path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {path}: expected a mapping of settings (space:, metric: ...), got {raw!r}")
    if changes.get("scheduler_type") is not None:  # --scheduler keeps the file's ASHA settings
        raw["scheduler"] = {**(raw.get("scheduler") or {}), "type": changes["scheduler_type"]}
    raw.update({k: v for k, v in changes.items() if v is not None and k != "scheduler_type"})
    try:  # typed like the main config; a sweep file's keys are settings of the sweep, not config keys
        spec = build_typed(SweepSpec, raw, noun="key")
    except ConfigError as err:
        raise ConfigError(f"sweep file {path}: {err}") from None
    spec.overrides = spec.overrides + list(extra_overrides or [])
    check(spec, path)
    return spec


def check(spec: SweepSpec, where: str | Path = "sweep") -> None:
    """Every mistake the driver can see, with where and how to fix it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(spec.name)):
        raise ConfigError(f"{where}: name={spec.name!r}: use letters, digits, '.', '_' and '-' (it names folders)")
    if spec.search not in SEARCHES:
        raise ConfigError(f"{where}: search={spec.search!r} must be one of {list(SEARCHES)}")
    if spec.mode not in ("min", "max") or spec.scheduler.mode not in ("min", "max"):
        raise ConfigError(f"{where}: mode must be 'min' or 'max'")
    if not METRIC.match(spec.metric):
        raise ConfigError(f"{where}: metric={spec.metric!r}: use passkey/acc/<length>, ppl/<length>, "
                          "ruler/<length> (a number, or 'target' for method.target_length), passkey/avg, "
                          "ruler/avg or loss")
    if not isinstance(spec.num_samples, int) or spec.num_samples < 1:
        raise ConfigError(f"{where}: num_samples={spec.num_samples!r} must be a positive integer")
    mct = spec.max_concurrent_trials
    if mct != "auto" and (not isinstance(mct, int) or mct < 1):
        raise ConfigError(f"{where}: max_concurrent_trials={mct!r}: give a positive integer or 'auto'")
    sched = spec.scheduler
    if sched.type not in SCHEDULERS:
        raise ConfigError(f"{where}: scheduler.type={sched.type!r} must be one of {list(SCHEDULERS)}")
    if sched.type == "asha":
        if sched.metric not in TRAINING_METRICS:
            raise ConfigError(f"{where}: scheduler.metric={sched.metric!r}: ASHA needs a metric reported during "
                              f"training, one of {list(TRAINING_METRICS)}")
        if sched.metric.startswith("probe/") and spec.probe is None:
            raise ConfigError(f"{where}: scheduler.metric={sched.metric} needs the probe: add `probe: {{every: 50}}`")
        if sched.grace_period < 1 or sched.reduction_factor <= 1:
            raise ConfigError(f"{where}: scheduler.grace_period must be >= 1 and reduction_factor > 1")
    if spec.probe is not None and (spec.probe.every < 1 or spec.probe.samples < 1 or not spec.probe.depths):
        raise ConfigError(f"{where}: probe.every and probe.samples must be >= 1 and probe.depths non-empty")
    base = base_config(spec)
    dims = dimensions(spec)
    if not dims:
        raise ConfigError(f"{where}: space is empty; add at least one dimension, e.g. "
                          "method.anchor_offset: {grid: [0, 1024]}")
    _check_values(spec, base, dims)
    if spec.metric.startswith(("ruler", "passkey", "ppl")):
        suite = spec.metric.split("/")[0]
        if not base.eval.enabled or suite not in base.eval.suites:
            raise ConfigError(f"{where}: metric={spec.metric} needs the {suite} evaluation: add "
                              f"--set eval.suites=[{suite}] (now eval.enabled={base.eval.enabled}, "
                              f"eval.suites={base.eval.suites})")


def base_config(spec: SweepSpec) -> ExtendConfig:
    """The config every trial starts from, with every relative path pinned to the launch directory."""
    return pin_paths(load_config(spec.base_config, spec.overrides), Path.cwd())


def dimensions(spec: SweepSpec) -> list[Dimension]:
    if not isinstance(spec.space, dict):
        raise ConfigError("sweep space must be a mapping of dotted config keys (or group names) to distributions")
    out, claimed = [], {}
    for key, dist in spec.space.items():
        key = str(key)
        hint = ("give one mapping such as {grid: [a, b]}, {choice: [a, b]}, {uniform: [lo, hi]}, "
                "{loguniform: [lo, hi]}, {quniform: [lo, hi, q]}, {randint: [lo, hi]}, {qrandint: [lo, hi, q]}")
        if not isinstance(dist, dict) or len(dist) != 1:
            raise ConfigError(f"sweep space {key!r}: {hint}")
        (kind, values), = dist.items()
        if kind not in CATEGORICAL and kind not in NUMERIC:
            raise ConfigError(f"sweep space {key!r}: unknown distribution {kind!r}; {hint}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep space {key!r}: {kind} needs a non-empty list, got {values!r}")
        dim = _group(key, kind, values) if "." not in key else _numeric(key, kind, values) if kind in NUMERIC \
            else Dimension(key, kind, list(values))
        for option in dim.options.values() or [{key: None}]:
            for dotted in option:
                if dotted in FIXED_PER_SWEEP:
                    raise ConfigError(f"sweep space {key!r}: {dotted} cannot be swept, every trial logs to the "
                                      "sweep's MLflow and outputs; set it with --set for the whole sweep")
                if claimed.setdefault(dotted, key) != key:
                    raise ConfigError(f"sweep space: {dotted} is set by both {claimed[dotted]!r} and {key!r}")
        out.append(dim)
    return out


def _group(key: str, kind: str, options: list) -> Dimension:
    if kind not in CATEGORICAL:
        raise ConfigError(f"sweep space {key!r}: a group (a name without a dot) takes grid or choice over "
                          f"mappings of config keys, e.g. {key}: {{grid: [{{method.anchor: random}}, "
                          "{method.anchor: fixed, method.anchor_offset: 0}]}")
    labelled = {}
    for option in options:
        if not isinstance(option, dict) or not option or not all("." in str(k) for k in option):
            raise ConfigError(f"sweep space {key!r}: each option must map dotted config keys to values, "
                              f"e.g. {{method.anchor: fixed, method.anchor_offset: 0}}; got {option!r}")
        label = ",".join(f"{str(k).rsplit('.', 1)[-1]}={v}" for k, v in option.items())
        if label in labelled:
            raise ConfigError(f"sweep space {key!r}: option {option!r} is listed twice")
        labelled[label] = {str(k): v for k, v in option.items()}
    return Dimension(key, kind, list(labelled), labelled)


def _numeric(key: str, kind: str, values: list) -> Dimension:
    n = NUMERIC[kind]
    if len(values) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        shape = "[lo, hi]" if n == 2 else "[lo, hi, q]"
        raise ConfigError(f"sweep space {key!r}: {kind} takes {shape} numbers, got {values!r}")
    lo, hi = values[0], values[1]
    if not lo < hi:
        raise ConfigError(f"sweep space {key!r}: {kind} range [{lo}, {hi}] is empty: lo must be below hi")
    if kind.endswith("loguniform") or kind == "lograndint":
        if lo <= 0:
            raise ConfigError(f"sweep space {key!r}: {kind} needs lo > 0, got {lo}")
    if kind.endswith("randint") and not all(float(v).is_integer() for v in values):
        raise ConfigError(f"sweep space {key!r}: {kind} takes integers, got {values!r}")
    if n == 3 and (values[2] <= 0 or values[2] > hi - lo):
        raise ConfigError(f"sweep space {key!r}: {kind} step q={values[2]} must be > 0 and fit in [{lo}, {hi}]")
    return Dimension(key, kind, list(values))


def _probe_values(dim: Dimension) -> list:
    """Values that stand for a dimension when checking configs: every option, or a numeric range's ends."""
    if dim.kind in CATEGORICAL:
        return list(dim.values)
    lo, hi = dim.values[0], dim.values[1]
    if dim.kind in ("randint", "lograndint"):
        hi -= 1  # Tune's randint excludes hi
    return [lo, hi]


def _check_values(spec: SweepSpec, base: ExtendConfig, dims: list[Dimension]) -> None:
    """Build the config of each value alone (names the key and value at fault), then of every grid point."""
    for dim in dims:
        for value in _probe_values(dim):
            apply(base, dim.overrides(value), where=f"sweep space {dim.key!r} value {value!r}")
    categorical = [d for d in dims if d.kind in CATEGORICAL]
    points = 1
    for d in categorical:
        points *= len(d.values)
    if points <= 512:  # cross-key rules (L > P, ...): cheap to check on the driver, costly to learn from a trial
        for combo in itertools.product(*(d.values for d in categorical)):
            params = {d.key: v for d, v in zip(categorical, combo)}
            apply(base, overrides_of(dims, params), where=f"sweep grid point {params}")


def overrides_of(dims: list[Dimension], params: dict) -> dict:
    out = {}
    for dim in dims:
        if dim.key in params:
            out.update(dim.overrides(params[dim.key]))
    return out


def apply(base: ExtendConfig, overrides: dict, where: str = "trial", run_name: str | None = None,
          launch_dir: Path | None = None) -> ExtendConfig:
    """`base` with dotted `overrides` set, validated like any config; relative paths pinned to `launch_dir`."""
    tree = json.loads(json.dumps(base.to_dict()))  # a deep copy
    for dotted, value in overrides.items():
        node, keys = tree, dotted.split(".")
        for i, key in enumerate(keys[:-1]):
            node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {dotted!r} is not a config key ({'.'.join(keys[:i + 1])} is not a "
                                  "section); `python pipelines/extend.py --print-config` lists every key")
        if keys[-1] not in node:
            section = ".".join(keys[:-1])
            raise ConfigError(f"{where}: unknown config key {dotted!r}; valid keys in {section}: {sorted(node)}")
        node[keys[-1]] = value.item() if hasattr(value, "item") else value  # numpy scalars from the searchers
    if run_name is not None:
        tree["run"]["name"] = run_name
    try:
        cfg = config_from_dict(tree).validate()
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return pin_paths(cfg, launch_dir or Path.cwd())
