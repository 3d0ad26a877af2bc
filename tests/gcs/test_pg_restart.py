"""Placement groups survive a SIGKILLed control store with durable (Redis) tables.

The node daemons keep holding their bundles while it is away; the restarted
control store reads the groups back and gives the nodes' records their
bundle resources again when they register.
"""

from __future__ import annotations

import os
import signal

import pytest
from conftest import gcs_server_pid, wait_for

import skate
from skate.cluster_utils import Cluster
from skate.util.placement_group import (
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)


@skate.remote(num_cpus=0)
def node_of() -> str:
    return skate.get_runtime_context().get_node_id()


@pytest.mark.timeout(180)
def test_groups_survive_a_control_store_restart(redis_url):
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_storage": redis_url})
    try:
        other = c.add_node(num_cpus=1, resources={"other": 2})
        skate.init(address=c.address)
        try:
            kept = placement_group([{"other": 1}], name="kept")
            assert kept.wait(60)
            waiting = placement_group([{"other": 5}])
            hexid = kept.id.hex()
            # (An unnamed group's creation is a one-way message: the test kills the
            # control store once it has stored it.)
            wait_for(lambda: placement_group_table(waiting).get("state") == "PENDING", 30,
                     what="the waiting group in the control store")
            old = gcs_server_pid(c)
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: gcs_server_pid(c) not in (0, old), 15, what="a new control store")
            wait_for(lambda: skate.cluster_resources().get(f"other_group_{hexid}") == 1, 30,
                     what="the bundle resources back in the node's record")
            assert placement_group_table(kept)["state"] == "CREATED"
            assert placement_group_table(waiting)["state"] == "PENDING"
            assert get_placement_group("kept") == kept
            assert skate.get(node_of.options(placement_group=kept).remote(), timeout=60) == other.node_id
            remove_placement_group(kept)
            remove_placement_group(waiting)
            wait_for(lambda: skate.available_resources().get("other") == 2, 30, what="the bundle given back")
        finally:
            skate.shutdown()
    finally:
        c.shutdown()
