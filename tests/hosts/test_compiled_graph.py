"""A compiled graph whose actors run on two hosts (network namespaces, see conftest.py).

Each host's abstract Unix sockets, and its 127.0.0.1, are its own: the
channels between the hosts work only if every actor listens on its node's
address and every channel dials the peer's.  A driver on a host with no
node of its own reaches both actors the same way.
"""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.hosts.test_cluster import alive_nodes, join, start_head

SPAN = """
import hashlib
import skate as ray
from skate.dag import InputNode, MultiOutputNode

ray.init(address="10.77.0.1:6380")
nodes = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}

@ray.remote(num_cpus=0)
class Stage:
    def echo(self, x):
        return x

    def where(self, x):
        import socket
        from skate._private.cgraph import worker
        ends = [s for ag in worker._GRAPHS.values() for s in ag.sockets()]
        tcp = sorted({s.sock.getsockname()[0] for s in ends if hasattr(s, "sock")})
        return ray.get_runtime_context().get_node_id(), hashlib.sha256(x).hexdigest(), tcp

a = Stage.options(resources={"head": 1}).remote()
b = Stage.options(resources={"other": 1}).remote()
with InputNode() as inp:
    x = a.echo.bind(inp)
    dag = MultiOutputNode([b.where.bind(x), a.echo.bind(b.echo.bind(x))])
# Slots smaller than the values: on one host too, every value goes through a socket.
cdag = dag.experimental_compile(_buffer_size_bytes=4096, _max_inflight_executions=2)
blob = bytes(range(256)) * 40_000  # 10 MB: many times a socket's buffer
want = hashlib.sha256(blob).hexdigest()
for i in range(3):
    refs = [cdag.execute(blob + bytes([i, j])) for j in range(2)]
    for j, (where, back) in enumerate(refs):
        node, digest, tcp = ray.get(where, timeout=60)
        assert node == nodes["10.77.0.2"], (node, nodes)
        assert digest == hashlib.sha256(blob + bytes([i, j])).hexdigest()
        assert tcp == ["10.77.0.2"], tcp  # b's channels to host 1 are on its node's address
        assert ray.get(back, timeout=60) == blob + bytes([i, j])
cdag.teardown()
with InputNode() as inp:  # the actors take part in a new graph after teardown
    again = b.echo.bind(a.echo.bind(inp)).experimental_compile()
assert ray.get(again.execute("hello"), timeout=60) == "hello"
again.teardown()
ray.shutdown()
print("span: ok")
"""


@pytest.mark.timeout(240)
def test_compiled_graph_spans_two_hosts(hosts):
    net = hosts(3)
    _, token = start_head(net[1], "--num-cpus", "1", "--resources", '{"head": 1}')
    join(net[2], token, "--node-ip-address", net[2].ip, "--num-cpus", "1", "--resources", '{"other": 1}')
    wait_for(lambda: alive_nodes(net[1], token, 2), 60, interval=0.5, what="the worker node to join")
    # From the head's host (its own node), then from host 3 (no node there).
    for h in (net[1], net[3]):
        r = h.python(SPAN, env=h.env(SKATE_CLUSTER_TOKEN=token), timeout=150)
        assert r.returncode == 0 and "span: ok" in r.stdout, f"driver on host {h.i}:\n{r.stdout}"
