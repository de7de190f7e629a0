"""Where a trial's files and runs go: the directory the sweep was launched from, never Tune's trial directory.

Ray Tune runs each trial in its own working directory (and, on a cluster, on another node), so a relative path read
inside a trial would land under Ray's session folder. Every path-like value is made absolute on the driver, against
the launch directory, before a trial sees it; values a trial draws from the space are pinned the same way.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from urllib.parse import urlparse

from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.errors import ConfigError
from endprompt_ray.resources import find_deepspeed

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def _pin(value: str | None, base: Path) -> str | None:
    if not value or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def pin_paths(cfg: ExtendConfig, base: Path) -> ExtendConfig:
    """`cfg` with every relative path made absolute against `base` (the launch directory)."""
    run = dataclasses.replace(cfg.run, output_dir=_pin(cfg.run.output_dir, base),
                              storage_path=_pin(cfg.run.storage_path, base))
    data = dataclasses.replace(cfg.data, paths=[_pin(p, base) for p in cfg.data.paths])
    evaluation = dataclasses.replace(cfg.eval, **{k: _pin(getattr(cfg.eval, k), base) for k in
                                                  ("ppl_documents", "essay_path", "squad_path", "hotpotqa_path")})
    ds = Path(cfg.train.deepspeed_config).expanduser()
    if not ds.is_absolute():  # as config.deepspeed_path: the launch directory first, then the shipped files
        ds = base / ds if (base / ds).exists() else find_deepspeed(ds)
    train = dataclasses.replace(cfg.train, deepspeed_config=str(ds))
    model = cfg.model
    local = Path(model.name_or_path).expanduser()
    if not local.is_absolute() and (base / local).exists():  # a local model dir; hub ids and presets stay
        model = dataclasses.replace(model, name_or_path=str((base / local).resolve()))
    rope = cfg.rope
    if getattr(rope, "factors_file", None):
        rope = dataclasses.replace(rope, factors_file=_pin(rope.factors_file, base))
    tracking = dataclasses.replace(cfg.tracking, tracking_uri=_pin_uri(cfg.tracking.tracking_uri, base))
    return dataclasses.replace(cfg, run=run, data=data, eval=evaluation, train=train, model=model, rope=rope,
                               tracking=tracking)


def _pin_uri(uri: str | None, base: Path) -> str | None:
    """sqlite:///relative.db and file:relative are relative to the working directory: pin them too."""
    if not uri:
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri and not uri.startswith("file:") and ":" not in uri.split("/")[0]:
        return str((base / uri).resolve())  # a bare folder: MLflow's file store
    return uri


def is_node_local(uri: str) -> bool:
    """True when the tracking URI means something different on every node: loopback servers and local files."""
    parsed = urlparse(uri)
    if parsed.scheme in ("sqlite", "file") or (parsed.scheme == "" and not uri.startswith("databricks")):
        return True  # a database file or an MLflow folder on this node's disk
    host = (parsed.hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def remote_tracking_error(uri: str, where: str) -> ConfigError:
    kind = "a local file" if urlparse(uri).scheme in ("sqlite", "file", "") else "a loopback address"
    return ConfigError(
        f"tracking.tracking_uri={uri} is {kind}, but {where}: there it would mean that node's own "
        f"{'disk' if kind == 'a local file' else 'MLflow server'}, and the driver's MLflow would miss those runs. "
        "Point every trial at one MLflow server that all nodes reach, e.g. "
        "--set tracking.tracking_uri=http://<head private IP>:5000 (`ray exec cluster/aws.yaml 'hostname -I'` "
        "prints it; see cluster/README.md, 'The Tune sweep')")


def check_tracking_reachable(uri: str, trial_resources: dict) -> None:
    """Fail before any trial starts when the tracking URI is node-local and trials can run on another node:
    the cluster has other live nodes with resources, or the driver's node cannot hold a trial (a `CPU: 0` head)."""
    import ray

    if not is_node_local(uri):
        return
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here
              and any(n.get("Resources", {}).get(r, 0) > 0 for r in ("CPU", "GPU"))]
    if others:
        raise remote_tracking_error(uri, f"this cluster has {len(others)} other node(s) where trials can run")
    local = next((n.get("Resources", {}) for n in ray.nodes() if n["NodeID"] == here), {})
    short = [r for r, need in trial_resources.items() if need > local.get(r, 0)]
    if short:
        raise remote_tracking_error(uri, f"this node has too little {'/'.join(short)} for a trial, so trials run "
                                         "on other nodes")


def check_trial_node(uri: str, driver_node: str) -> None:
    """Inside a trial: the same rule, for clusters that grew after the driver checked."""
    import ray

    if is_node_local(uri) and ray.get_runtime_context().get_node_id() != driver_node:
        raise remote_tracking_error(uri, "this trial runs on another node than the sweep's driver")
