"""Compiled graphs across two nodes of one host: channels between nodes are sealed TCP connections."""

from __future__ import annotations

import pytest

import skate
from skate.dag import InputNode, MultiOutputNode


@skate.remote
class Stage:
    def echo(self, x):
        return x

    def channels(self, x):
        """The kinds of this actor's graph sockets (while the graph runs)."""
        from skate._private.cgraph import worker

        ends = [s for ag in worker._GRAPHS.values() for s in ag.sockets()]
        return sorted({type(s).__name__ for s in ends}), len(x)


@pytest.mark.timeout(180)
def test_actors_on_two_nodes_write_to_each_other(cluster):
    # a -> b -> a: each actor dials the other while accepting the other's
    # dial, and each dial waits for the listener's side of the handshake.
    cluster.add_node(num_cpus=1, resources={"other": 1})
    skate.init(address=cluster.address)
    try:
        a = Stage.options(num_cpus=0).remote()
        b = Stage.options(num_cpus=0, resources={"other": 1}).remote()
        with InputNode() as inp:
            x = a.echo.bind(inp)
            dag = MultiOutputNode([a.echo.bind(b.echo.bind(x)), b.channels.bind(x)])
        cdag = dag.experimental_compile(_buffer_size_bytes=4096)
        blob = b"q" * 3_000_000
        for _ in range(2):
            back, (kinds, n) = skate.get(cdag.execute(blob), timeout=60)
            assert back == blob and n == len(blob)
            assert kinds == ["SealedSocket"]  # b's channels all go to the other node: all sealed
        cdag.teardown()
    finally:
        skate.shutdown()
