"""Distributed handle counting: an anonymous actor lives while a handle to it
exists in any process, and ends (gracefully) once the last one is gone."""

from __future__ import annotations

import gc
import os

from conftest import pid_gone, wait_for

import skate


@skate.remote
class Target:
    def pid(self):
        return os.getpid()

    def ping(self):
        return "pong"


@skate.remote
class Holder:
    def __init__(self):
        self.held = None

    def hold(self, handles):
        self.held = handles[0]
        return True

    def use(self):
        return skate.get(self.held.ping.remote())

    def drop(self):
        self.held = None
        import gc

        gc.collect()
        return True


def test_actor_lives_while_another_process_holds_its_handle(ray_start):
    t = Target.remote()
    pid = skate.get(t.pid.remote())
    h = Holder.remote()
    assert skate.get(h.hold.remote([t]))  # nested in a list: passed as a borrowed handle
    del t
    gc.collect()
    # The driver's handle is gone; the holder's keeps the actor alive.
    assert skate.get(h.use.remote(), timeout=30) == "pong"
    assert not pid_gone(pid)
    assert skate.get(h.drop.remote())
    wait_for(lambda: pid_gone(pid), 30, what="the actor to end once the last handle is gone")


def test_actor_passed_to_a_finished_task_is_collected(ray_start):
    @skate.remote
    def call(handles):
        return skate.get(handles[0].ping.remote())

    t = Target.remote()
    pid = skate.get(t.pid.remote())
    assert skate.get(call.remote([t]), timeout=30) == "pong"
    del t
    gc.collect()
    wait_for(lambda: pid_gone(pid), 30, what="the actor to end")


def test_handle_returned_by_a_task_keeps_the_actor(ray_start):
    @skate.remote
    def make():
        t = Target.remote()
        return [t, skate.get(t.pid.remote())]

    t, pid = skate.get(make.remote(), timeout=30)
    # Its creator (the task's worker) dropped its own handle; ours keeps it alive.
    assert skate.get(t.ping.remote(), timeout=30) == "pong"
    del t
    gc.collect()
    wait_for(lambda: pid_gone(pid), 30, what="the actor to end")


def test_new_actors_spread_over_nodes_with_room(cluster):
    other = cluster.add_node(num_cpus=1)
    skate.init(address=cluster.address)
    try:

        @skate.remote
        class Where:
            def node(self):
                return skate.get_runtime_context().get_node_id()

        actors = [Where.remote() for _ in range(4)]
        nodes = skate.get([a.node.remote() for a in actors], timeout=60)
        assert set(nodes) == {cluster.head_node.node_id, other.node_id}
    finally:
        skate.shutdown()
