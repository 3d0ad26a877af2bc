"""A cluster across hosts that are network namespaces (see conftest.py).

The seed's deployment: ``skate start --head --node-ip-address <ip>`` on one
host, ``skate start --address <head>`` on the others, and drivers that
``init("<head>")`` from a worker host and from a host outside the cluster
(with the cluster token), each reaching the others over the bridge only.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest
from conftest import wait_for

HEAD = "10.77.0.1:6380"

# Shared example 05's driver, pointed at the head over the network.
EXAMPLE_05 = """
import skate as ray

ray.init(address="10.77.0.1:6380")
assert ray.cluster_resources().get("CPU") == 4, ray.cluster_resources()
assert len([n for n in ray.nodes() if n["Alive"]]) == 2

@ray.remote(resources={"other": 1})
def where():
    return ray.get_runtime_context().get_node_id()

@ray.remote(resources={"head": 1})
def here():
    return ray.get_runtime_context().get_node_id()

assert ray.get(where.remote()) != ray.get(here.remote())
me = ray.get_runtime_context().get_node_id()
print("driver node ip:", [n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == me][0])
ray.shutdown()
print("driver: ok")
"""


def start_head(h, *extra: str):
    p = h.popen(h.skate("start", "--head", "--node-ip-address", h.ip, "--port", "6380", "--block", *extra))
    token_file = wait_for(lambda: _token_file(h), 30, what="the head's token file")
    wait_for(lambda: _reachable(h, HEAD), 30, what="the head to listen")
    return p, open(token_file).read().strip()


def _token_file(h):
    files = glob.glob(os.path.join(h.temp_dir, "session_*", "token"))
    return files[0] if files and os.path.getsize(files[0]) else None


def _reachable(h, address):
    host, port = address.split(":")
    r = h.run(["bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"], timeout=10)
    return r.returncode == 0


def join(h, token: str, *extra: str):
    return h.popen(h.skate("start", "--address", HEAD, "--block", *extra), env=h.env(SKATE_CLUSTER_TOKEN=token))


def alive_nodes(h, token: str, n: int):
    code = (
        "from skate._private import discovery, wire\n"
        f"nodes = discovery.request('{HEAD}', b'{token}', 'get_nodes', expect=wire.GCS_IDENTITY)\n"
        "print(sum(1 for x in nodes if x['alive']))\n"
    )
    r = h.python(code)
    return r.returncode == 0 and r.stdout.strip().endswith(str(n))


@pytest.mark.timeout(180)
def test_example_05_across_three_hosts(hosts):
    net = hosts(3)
    _, token = start_head(net[1], "--num-cpus", "2", "--resources", '{"head": 1}')
    join(net[2], token, "--node-ip-address", net[2].ip, "--num-cpus", "2", "--resources", '{"other": 1}')
    wait_for(lambda: alive_nodes(net[1], token, 2), 60, interval=0.5, what="the worker node to join")
    # A driver on the worker host, and one on a host outside the cluster;
    # both have the address and the token, nothing else.
    # The one on the worker host uses that host's node daemon; the outsider
    # the head's.
    for h, node_ip in ((net[2], net[2].ip), (net[3], net[1].ip)):
        r = h.python(EXAMPLE_05, env=h.env(SKATE_CLUSTER_TOKEN=token), timeout=90)
        assert r.returncode == 0 and "driver: ok" in r.stdout, f"driver on host {h.i}:\n{r.stdout}"
        assert f"driver node ip: {node_ip}" in r.stdout, r.stdout


BROADCAST = """
import hashlib, time
import skate as ray

ray.init(address="10.77.0.1:6380")
N = 256 << 20  # 256 MiB: the 1 GiB of the issue cut to fit a 2-core, small CI machine
blob = bytes(range(256)) * (N // 256)
want = hashlib.sha256(blob).hexdigest()
ref = ray.put(blob)
del blob

@ray.remote(num_cpus=0)
def digest(b):
    return ray.get_runtime_context().get_node_id(), hashlib.sha256(b).hexdigest()

nodes = [n for n in ray.nodes() if n["Alive"]]
t = time.monotonic()
got = ray.get([digest.options(resources={f"node:{n['NodeManagerAddress']}": 0.01}).remote(ref) for n in nodes])
print(f"broadcast to {len(nodes)} nodes: {time.monotonic() - t:.2f} s")
assert {g[0] for g in got} == {n["NodeID"] for n in nodes}, got
assert all(g[1] == want for g in got)
back = ray.get(ref)
assert len(back) == N
ray.shutdown()
print("broadcast: ok")
"""


@pytest.mark.timeout(240)
def test_large_object_broadcast_to_every_node(hosts):
    """A 256 MiB object put on one host is read on all three nodes; so does an off-cluster driver's."""
    net = hosts(4)
    store = ["--object-store-memory", str(700 << 20), "--num-cpus", "1"]
    _, token = start_head(net[1], *store)
    for h in (net[2], net[3]):
        join(h, token, "--node-ip-address", h.ip, *store)
    wait_for(lambda: alive_nodes(net[1], token, 3), 60, interval=0.5, what="the nodes to join")
    # From the head host (its node's shared memory), then from host 4, which
    # has no node daemon: its object goes to the head's node over the wire.
    for h in (net[1], net[4]):
        r = h.python(BROADCAST, env=h.env(SKATE_CLUSTER_TOKEN=token), timeout=150)
        assert r.returncode == 0 and "broadcast: ok" in r.stdout, f"driver on host {h.i}:\n{r.stdout}"


CUT = """
import os, sys, threading, time
import skate as ray

ray.init(address="10.77.0.1:6380")
go = sys.argv[1]
nodes = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}

@ray.remote(num_cpus=1, max_retries=3)
def work(i):
    node = ray.get_runtime_context().get_node_id()
    open(os.path.join(go, f"started-{i}-{node}"), "w").close()
    while not os.path.exists(os.path.join(go, "go")):
        time.sleep(0.05)
    return node

@ray.remote(num_cpus=0, resources={"head": 1})
def parent():
    return ray.get([work.remote(i) for i in range(3)])

@ray.remote(num_cpus=0, resources={"far": 0.5})
def wait_go():
    while not os.path.exists(os.path.join(go, "go")):
        time.sleep(0.05)
    return 1

@ray.remote(num_cpus=0, resources={"far": 0.5})
class Far:  # on host 2: a call to it is in flight when the host is cut off
    def lend(self):  # an object it owns, not ready before the cut
        self.kept = wait_go.remote()
        return [self.kept]

    def block(self):
        open(os.path.join(go, "started-actor"), "w").close()
        while not os.path.exists(os.path.join(go, "go")):
            time.sleep(0.05)
        return "answered"

far = Far.remote()
[owned] = ray.get(far.lend.remote())
call = far.block.remote()
fetched = []

def fetch():  # asks the owner on host 2 for the value, before the cut
    try:
        fetched.append(ray.get(owned, timeout=60))
    except Exception as e:
        fetched.append(type(e).__name__)

fetcher = threading.Thread(target=fetch)
fetcher.start()
if sys.argv[2] == "nested":  # submitted by a task (a worker on the head), not by the driver
    got = ray.get(parent.remote(), timeout=120)
else:
    got = ray.get([work.remote(i) for i in range(3)], timeout=120)
dead = [n for n in ray.nodes() if not n["Alive"]]
print("results:", got, "dead:", [n["NodeManagerAddress"] for n in dead], flush=True)
assert [n["NodeManagerAddress"] for n in dead] == ["10.77.0.2"]
assert set(got) == {nodes["10.77.0.1"]}, (got, nodes)
try:  # its caller is not left waiting: the actor died with its node (no restarts)
    ray.get(call, timeout=30)
    raise AssertionError("the call to the actor on the dead host returned")
except ray.exceptions.ActorDiedError as e:
    print("actor:", str(e).splitlines()[0], flush=True)
fetcher.join(60)  # nor is a borrower of an object owned there
assert fetched == ["OwnerDiedError"], fetched
ray.shutdown()
print("cut: ok")
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("submitter", ["driver", "nested"])
def test_host_cut_off_is_declared_dead_and_its_tasks_retried(hosts, tmp_path, submitter):
    """Tasks running on a host that is cut off are retried on the head, whether a driver or a
    task submitted them; a call in flight to an actor there fails with the actor's death
    and a borrower waiting for an object owned there gets OwnerDiedError, instead of
    waiting on connections the cut-off host never closes."""
    net = hosts(2)
    timeout_s = 3.0
    head_env = net[1].env(SKATE_NODE_TIMEOUT_S=str(timeout_s))
    p = net[1].popen(net[1].skate("start", "--head", "--node-ip-address", net[1].ip, "--port", "6380", "--block",
                                  "--num-cpus", "1", "--resources", '{"head": 1}'), env=head_env)
    token = open(wait_for(lambda: _token_file(net[1]), 30, what="the head's token file")).read().strip()
    assert p.poll() is None
    join(net[2], token, "--node-ip-address", net[2].ip, "--num-cpus", "2", "--resources", '{"far": 1}')
    wait_for(lambda: alive_nodes(net[1], token, 2), 60, interval=0.5, what="the worker node to join")
    go = tmp_path / "go"
    go.mkdir()
    driver = net[1].popen([sys.executable, "-c", CUT, str(go), submitter], env=net[1].env(SKATE_CLUSTER_TOKEN=token))
    # Two of the three tasks run on host 2 (host 1 has one CPU).
    wait_for(lambda: len([f for f in os.listdir(go) if f.startswith("started-")]) == 4, 60, interval=0.1,
             what="the three tasks and the actor's call to start")
    net[2].cut()
    t = time.monotonic()
    wait_for(lambda: alive_nodes(net[1], token, 1), timeout_s + 10, interval=0.2, what="host 2 to be declared dead")
    took = time.monotonic() - t
    assert took < timeout_s + 3, f"declared dead after {took:.1f} s (health-check timeout {timeout_s} s)"
    (go / "go").touch()
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 0 and "cut: ok" in out, out


def _listeners(h) -> list[tuple[str, int]]:
    out = h.run(["ss", "-Hltn"], timeout=10).stdout
    pairs = []
    for line in out.splitlines():
        local = line.split()[3]
        ip, _, port = local.rpartition(":")
        pairs.append((ip.strip("[]"), int(port)))
    return pairs


@pytest.mark.timeout(180)
def test_every_process_listens_on_its_own_hosts_address_and_ports(hosts):
    """Daemons, workers and drivers bind their host's address only; the node daemon's and the
    workers' ports are the ones given (for firewalls)."""
    net = hosts(2)
    ports = ("--min-worker-port", "12000", "--max-worker-port", "12099")
    _, token = start_head(net[1], "--num-cpus", "1", "--node-manager-port", "6390", *ports)
    join(net[2], token, "--num-cpus", "1", "--node-manager-port", "6391", *ports)  # its address: routed to the head
    wait_for(lambda: alive_nodes(net[1], token, 2), 60, interval=0.5, what="the worker node to join")
    code = """
import sys
import skate as ray
ray.init(address="10.77.0.1:6380")
@ray.remote(num_cpus=1)
def f():
    return ray.get_runtime_context().get_node_id()
got = ray.get([f.remote() for _ in range(4)])
print("ips", sorted(n["NodeManagerAddress"] for n in ray.nodes()), flush=True)
sys.stdin.readline()  # while the test looks at who listens where
ray.shutdown()
"""
    driver = net[2].popen([sys.executable, "-c", code], env=net[2].env(SKATE_CLUSTER_TOKEN=token),
                          stdin=subprocess.PIPE)
    seen = []
    for line in driver.stdout:  # log lines ("Connected to skate cluster ...") come first
        seen.append(line)
        if line.startswith("ips "):
            break
    assert "ips ['10.77.0.1', '10.77.0.2']" in seen[-1], "".join(seen)
    for h, nm_port, extra, drivers in ((net[1], 6390, {6380}, 0), (net[2], 6391, set(), 1)):
        listening = _listeners(h)
        assert {ip for ip, _ in listening} == {h.ip}, listening
        got = {p for _, p in listening}
        assert {nm_port} | extra <= got, listening
        others = got - {nm_port} - extra
        workers = {p for p in others if 12000 <= p <= 12099}
        assert workers and len(others - workers) == drivers, listening  # a worker listens on two ports
    driver.communicate("\n", timeout=60)
    assert driver.returncode == 0
