"""Joining Ray: the one place every entry point (training, sweeps, the LongRoPE search, RULER's workers) connects."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import ray

from endprompt_ray.errors import ConfigError


def connect_ray(**kwargs) -> None:
    """Attach to a running cluster (RAY_ADDRESS, `ray job submit`, or a local `ray start`), else start a local one.
    After `quiet_logs`, Ray processes' output stays in Ray's log files instead of the console."""
    if not ray.is_initialized():
        if os.environ.get("ENDPROMPT_QUIET"):
            kwargs = {"log_to_driver": False, "logging_level": logging.WARNING, **kwargs}
        if "address" not in kwargs and not os.environ.get("RAY_ADDRESS"):
            check_recorded_cluster()
        ray.init(**kwargs)


def check_recorded_cluster(timeout_s: float = 3.0) -> None:
    """With no address, `ray.init()` joins the cluster this machine last started with `ray start` (Ray records its
    address in a file), and waits many minutes for one that has died. Fail at once instead, saying how to go on."""
    from ray._common.utils import get_ray_address_file  # no public accessor for the recorded address

    record = Path(get_ray_address_file(None))
    recorded = record.read_text().strip() if record.is_file() else ""
    if not recorded:
        return
    host, _, port = recorded.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        raise ConfigError(
            f"no Ray answers at {recorded}, the cluster this machine last started with `ray start` (recorded in "
            f"{record}), which Ray joins when no address is given: start it again "
            "(`ray start --head`), forget it (`ray stop`), or set RAY_ADDRESS=local to run on a new local Ray") from None


def ray_logs_dir() -> str:
    """Where this Ray session keeps every process's output (the node this driver runs on)."""
    from ray._private.worker import _global_node  # no public accessor for the session directory

    return _global_node.get_logs_dir_path() if _global_node is not None else "/tmp/ray/session_latest/logs"
