"""Tasks and actors in placement groups: which group, which bundle, what to ask for.

``apply`` turns a task's or actor's options (``scheduling_strategy=
PlacementGroupSchedulingStrategy(...)``, or the older ``placement_group=``,
``placement_group_bundle_index=``, ``placement_group_capture_child_tasks=``)
and the group of the code running now (when it captures child tasks) into
the resources to lease, in the group's names (``bundle_resources``), and the
``pg`` field of the task spec: ``[group id, bundle index, capture]``.  Like
Ray: a request that fits no bundle of the group is a ValueError, and an
explicit scheduling strategy stops the capture.
"""

from __future__ import annotations

import asyncio
from typing import Any

from skate._private import bundle_resources as br
from skate._private import runtime, task_context

_BUNDLES: dict[bytes, list[dict]] = {}  # group id -> bundle specs (they never change)
_CREATED: set[bytes] = set()  # groups made here that the control store said are created now
_REMOVED_HERE: set[bytes] = set()  # groups this process removed


def watch_own_groups(core: Any) -> None:
    """Has the control store's word on the groups this process creates kept here.

    It tells a group's creator when the group is created, and when it stops
    being so (removed, or a node of it died); ``created`` answers from that.
    """
    core.handlers.setdefault("placement_group_state", _on_state)


def _on_state(conn: Any, body: list, bufs: list) -> None:
    pg_id, created = body
    if created:
        if len(_CREATED) > 100_000:
            _CREATED.clear()
        _CREATED.add(pg_id)
    else:
        _CREATED.discard(pg_id)


def created(pg_id: bytes) -> bool:
    """True when the control store told this process the group is created (False: ask it)."""
    return pg_id in _CREATED and pg_id not in _REMOVED_HERE


def removed_here(pg_id: bytes) -> None:
    """Notes a group this process removed (so a late "created" word is not believed)."""
    if len(_REMOVED_HERE) > 100_000:
        _REMOVED_HERE.clear()
    _REMOVED_HERE.add(pg_id)
    _CREATED.discard(pg_id)


def current() -> list | None:
    """``[group id, bundle index, capture]`` of the task or actor running now, or None."""
    spec = task_context.CURRENT.get()
    if spec is None:
        return None
    pg = spec.get("pg")
    if pg is None and "m" in spec:  # an actor call: the actor's own group
        core = runtime.current_or_none()
        ex = getattr(core, "executor", None)
        actor_spec = getattr(ex, "actor_spec", None)
        if actor_spec:
            pg = actor_spec.get("pg")
    return pg


def bundle_specs(pg_id: bytes) -> list[dict]:
    """The bundles of a group, asked of the control store once.

    Raises:
        ValueError: no such group.
    """
    specs = _BUNDLES.get(pg_id)
    if specs is None:
        rec = runtime.current().gcs_call("get_placement_group", {"pg_id": pg_id})
        if rec is None:
            raise ValueError(f"placement group {pg_id.hex()} does not exist")
        specs = [dict(b) for b in rec["bundles"]]
        if len(_BUNDLES) > 1000:
            _BUNDLES.clear()
        _BUNDLES[pg_id] = specs
    return specs


def _fits_a_bundle(need: dict, bundles: list[dict]) -> bool:
    need = {k: v for k, v in need.items() if v > 0}
    return any(all(b.get(k, 0.0) >= v for k, v in need.items()) for b in bundles)


def apply(o: dict, resources: dict, placement: dict | None, what: str) -> tuple[dict, dict | None, list] | None:
    """The resources (and actor placement resources) in the group, and the spec's ``pg`` field.

    Returns None when the task or actor runs in no placement group.

    Raises:
        ValueError: a strategy given twice, a bundle index out of range or
            without a group, or a request that fits no bundle (follows Ray).
    """
    strategy = o.get("scheduling_strategy")
    legacy = ("placement_group" in o and o["placement_group"] != "default") or o.get(
        "placement_group_bundle_index", -1) != -1 or o.get("placement_group_capture_child_tasks") is not None
    if not legacy and strategy is None and task_context.CURRENT.get() is None:
        return None  # the common case: the driver, no group
    if legacy:
        if strategy is not None:
            raise ValueError("Scheduling strategy can only be specified once.")
        pg, index, capture = (o.get("placement_group", "default"), o.get("placement_group_bundle_index", -1),
                              o.get("placement_group_capture_child_tasks"))
    elif type(strategy).__name__ == "PlacementGroupSchedulingStrategy":
        pg, index, capture = (strategy.placement_group, strategy.placement_group_bundle_index,
                              strategy.placement_group_capture_child_tasks)
    elif strategy is None:
        pg, index, capture = "default", -1, None
    else:
        return None
    here = current() if pg == "default" or capture is None else None
    if capture is None:
        capture = bool(here and here[2])
    if pg == "default":
        pg_id = here[0] if capture and here else None
    else:
        pg_id = None if pg is None or pg.is_empty else pg.id.binary()
        if pg_id is not None and pg.bundle_cache and pg_id not in _BUNDLES:
            _BUNDLES[pg_id] = pg.bundle_cache
    if pg_id is None:
        if index != -1:
            raise ValueError("If placement group is not set, the value of bundle index must be -1.")
        return None
    bundles = bundle_specs(pg_id)
    if index >= len(bundles) or index < -1:
        raise ValueError(
            f"placement group bundle index {index} is invalid. Valid placement group indexes: 0 to {len(bundles) - 1}."
        )
    if not _fits_a_bundle(resources, bundles):
        raise ValueError(
            f"Cannot schedule {what} with the placement group because the resource request {resources} "
            f"cannot fit into any bundles for the placement group, {bundles}."
        )
    if placement is not None and not _fits_a_bundle(placement, bundles):
        raise ValueError(
            f"Cannot schedule {what} with the placement group because the actor requires "
            f"{placement.get('CPU', 0)} CPU for creation, but it cannot fit into any bundles for the placement "
            f"group, {bundles}. Consider creating a placement group with CPU resources."
        )
    hexid = pg_id.hex()
    return (
        br.request_in_group(resources, hexid, index),
        None if placement is None else br.request_in_group(placement, hexid, index),
        [pg_id, index, bool(capture)],
    )


def tell_gcs(core: Any, method: str, body: Any) -> None:
    """Sends the control store a request whose answer nobody needs, as a notification.

    It travels on this process's one link to the control store, so requests
    made after it are handled after it; before that link exists, it is an
    ordinary request.
    """
    fut = core.gcs_fut
    if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None and not fut.result().given_up:
        core.post(fut.result().notify, method, body)
    else:
        core.gcs_call(method, body)


def ready_ref(core: Any, pg: Any) -> Any:
    """An ObjectRef owned here whose value is ``pg`` once the group is created.

    When the group is removed first, getting the ref raises
    ``GetTimeoutError``-free ``RayError`` saying so.
    """
    from skate import exceptions as exc
    from skate._private import serialization
    from skate._private.core_worker.errors import error_payload
    from skate._private.core_worker.memory_store import ERROR, INLINE
    from skate.object_ref import ObjectRef

    oid = core.new_put_id()
    core.store.create(oid)
    ref = ObjectRef(oid, core.address)
    pg_id = pg.id.binary()

    async def watch() -> None:
        while True:
            try:
                gcs = await core.gcs()
                created = await gcs.request("wait_placement_group", {"pg_id": pg_id, "timeout": 60.0})
            except Exception as e:  # the control store went away: the cluster is ending
                data, bufs = error_payload(exc.RaySystemError(f"waiting for placement group {pg_id.hex()}: {e}"))
                core.store.complete(oid, ERROR, data, bufs)
                return
            if created:
                data, bufs, _ = serialization.dumps(pg, "a placement group")
                core.store.complete(oid, INLINE, data, [bytes(b) for b in bufs])
                return
            rec = await gcs.request("get_placement_group", {"pg_id": pg_id})
            if rec is None or rec["state"] == "REMOVED":
                data, bufs = error_payload(exc.RayError(f"placement group {pg_id.hex()} was removed before it was created"))
                core.store.complete(oid, ERROR, data, bufs)
                return

    core.post(lambda: asyncio.ensure_future(watch()))
    return ref
