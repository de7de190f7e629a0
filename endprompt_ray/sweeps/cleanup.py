"""Give back the resources of trials Tune stopped: their Ray Train workers' placement groups.

When a scheduler stops a trial, Tune ends the trial's process and with it the Ray Train controller it started;
the controller's placement group (the workers' CPUs/GPUs) then stays reserved until the sweep's driver exits, because
a placement group made by a non-detached actor lives as long as its job. Ray Train starts a detached cleaner for this,
but it needs the dashboard's state API and a single Ray instance per machine (`ray.init(include_dashboard=False)`,
or two local clusters on one host, leave it unable to look), and every later trial would wait for resources that
never come back. The driver therefore removes, in its own job only, placement groups whose creating actor is dead.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("endprompt_ray")
_NIL = b"\xff"


def reap_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creator actor has died; returns how many. Best effort: Ray's own
    cleaner may have removed them first, and a Ray without these (private) tables is left alone."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        table = state._connect_and_get_accessor().get_placement_group_table()
        job = bytes.fromhex(ray.get_runtime_context().get_job_id())
    except Exception as err:  # noqa: BLE001 - a Ray version without these internals: nothing to do
        log.debug("placement group table unavailable: %s", err)
        return 0
    removed = 0
    for raw in table:
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        made_by_actor = bool(pg.creator_actor_id) and pg.creator_actor_id.strip(_NIL) != b""
        live = pg.state != gcs_pb2.PlacementGroupTableData.REMOVED
        if live and made_by_actor and pg.creator_actor_dead and not pg.is_detached and pg.creator_job_id == job:
            try:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
                removed += 1
            except Exception as err:  # noqa: BLE001 - already removed by Ray's cleaner
                log.debug("placement group %s: %s", pg.placement_group_id.hex(), err)
    return removed


class Reaper:
    """Reaps after a trial ended early or failed, every `interval_s` until `patience_s` later (its controller dies
    a moment after Tune drops the trial); otherwise never, since reading the table costs Tune's loop a second."""

    def __init__(self, interval_s: float = 2.0, patience_s: float = 60.0) -> None:
        self.interval_s, self.patience_s = interval_s, patience_s
        self._next = self._until = 0.0
        self._pending = 0  # trials ended since the last reap found their placement group

    def arm(self) -> None:
        now = time.monotonic()
        self._next, self._until, self._pending = now + self.interval_s, now + self.patience_s, self._pending + 1

    def __call__(self) -> int:
        now = time.monotonic()
        if now > self._until or now < self._next:
            return 0
        self._next = now + self.interval_s
        removed = reap_orphaned_placement_groups()
        self._pending -= removed
        if self._pending <= 0:
            self._until, self._pending = 0.0, 0
        return removed
