"""The dashboard process: its credential, its views, its metrics and its life cycle.

Every test talks to a real dashboard process over HTTP on 127.0.0.1, in
front of a real cluster.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.parse

import psutil
import pytest
from conftest import pid_gone, wait_for

import skate
from skate._private import dashboard_launch

pytest.importorskip("aiohttp")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

pytestmark = pytest.mark.timeout(120)

ROUTES = ["/", "/static/app.js", "/static/style.css", "/api/summary", "/api/nodes", "/api/actors", "/api/tasks",
          "/api/jobs", "/api/placement_groups", "/api/timeline", "/api/waiting", "/api/logs/1", "/metrics"]


def _split(url: str) -> tuple[str, int, str]:
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port, urllib.parse.parse_qs(u.query)["token"][0]


def request(url: str, path: str, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
    """One GET to the dashboard at ``url`` (its link); ``(status, headers, body)``, redirects not followed."""
    host, port, _ = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(url: str, path: str):
    import json

    status, _, body = request(url, path, {"Authorization": f"Bearer {_split(url)[2]}"})
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def dashboard_pids() -> list[int]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "skate.dashboard" in " ".join(p.cmdline()) or p.name() == "skate::dashboard" or \
                    (p.cmdline() and p.cmdline()[0] == "skate::dashboard"):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


@pytest.fixture
def dash():
    """A local cluster with a dashboard; yields its link."""
    ctx = skate.init(num_cpus=2, include_dashboard=True, dashboard_port=0)
    try:
        yield ctx.dashboard_url
    finally:
        skate.shutdown()


# --- the credential ----------------------------------------------------------------------------


def test_every_route_refuses_requests_without_the_credential(dash):
    good = _split(dash)[2]
    wrong = dashboard_launch.credential(b"another cluster's token")
    for path in ROUTES:
        status, headers, _ = request(dash, path)
        assert status == 401, (path, status)
        assert "set-cookie" not in headers
        for bad in ({"Authorization": f"Bearer {wrong}"}, {"Cookie": f"skate_dashboard={wrong}"}):
            assert request(dash, path, bad)[0] == 403, (path, bad)
        sep = "&" if "?" in path else "?"
        assert request(dash, f"{path}{sep}token={wrong}")[0] == 403, path
        assert request(dash, path, {"Authorization": f"Bearer {good}"})[0] in (200, 302), path


def test_the_credential_is_not_the_cluster_token(dash):
    from skate._private import runtime

    token = runtime.current().token
    cred = _split(dash)[2]
    assert token.decode() not in dash and cred == dashboard_launch.credential(token)
    assert request(dash, "/api/summary", {"Authorization": f"Bearer {token.decode()}"})[0] == 403


def test_the_link_sets_an_httponly_cookie_and_drops_the_token_from_the_address(dash):
    host, port, cred = _split(dash)
    status, headers, _ = request(dash, f"/?token={cred}")
    assert status == 302 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"skate_dashboard={cred}") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, headers, body = request(dash, "/", {"Cookie": f"skate_dashboard={cred}"})
    assert status == 200 and b"<title>skate dashboard</title>" in body
    assert headers["cache-control"] == "no-store"


def test_dashboard_binds_to_loopback_by_default(dash):
    host, port, _ = _split(dash)
    assert host == "127.0.0.1"
    conns = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == "LISTEN"]
    assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns)


# --- the views ------------------------------------------------------------------------------------


@skate.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        print("counter incremented")
        self.n += 1
        return self.n


@skate.remote
def fails() -> None:
    raise ValueError("broken on purpose")


@skate.remote
def square(x: int) -> int:
    return x * x


def _workload() -> tuple:
    counter = Counter.remote()
    assert skate.get(counter.incr.remote()) == 1
    assert skate.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
    with pytest.raises(ValueError):
        skate.get(fails.remote())
    return counter


def test_views_show_nodes_actors_tasks_with_tracebacks_and_jobs(dash):
    counter = _workload()  # noqa: F841  # alive while the views are read
    nodes = get_json(dash, "/api/nodes")
    assert len(nodes) == 1 and nodes[0]["state"] == "ALIVE" and nodes[0]["is_head"]
    st = nodes[0]["stats"]
    assert st["store_capacity"] > 0 and st["mem_total"] > st["mem_used"] > 0 and st["cpu_count"] >= 1
    assert st["processes_rss"] > 10 * 2**20  # the node daemon and its workers
    assert nodes[0]["resources_total"]["CPU"] == 2.0

    actors = wait_for(lambda: [a for a in get_json(dash, "/api/actors") if a["class_name"] == "Counter"], 20)
    assert actors[0]["state"] == "ALIVE" and actors[0]["num_restarts"] == 0 and actors[0]["pid"]
    status, _, log = request(dash, f"/api/logs/{actors[0]['pid']}", {"Authorization": f"Bearer {_split(dash)[2]}"})
    assert status == 200 and b"counter incremented" in log

    def failed():
        return [t for t in get_json(dash, "/api/tasks") if t["name"] == "fails" and t["state"] == "FAILED"]

    task = wait_for(failed, 20)[0]
    assert task["error_type"] == "ValueError"
    assert "Traceback (most recent call last)" in task["error_message"]
    assert 'raise ValueError("broken on purpose")' in task["error_message"]
    assert task["duration_ms"] is not None and task["duration_ms"] >= 0
    finished = wait_for(lambda: [t for t in get_json(dash, "/api/tasks?state=FINISHED") if t["name"] == "square"], 20)
    assert len(finished) == 3

    jobs = get_json(dash, "/api/jobs")
    assert [j["status"] for j in jobs] == ["RUNNING"] and jobs[0]["driver_pid"] == os.getpid()
    from skate.util import placement_group, remove_placement_group

    pg = placement_group([{"CPU": 1}], strategy="PACK", name="pg-view")
    skate.get(pg.ready(), timeout=30)
    (row,) = wait_for(lambda: get_json(dash, "/api/placement_groups"), 10)  # (snapshots are up to 1 s old)
    assert row["name"] == "pg-view" and row["state"] == "CREATED" and row["strategy"] == "PACK"
    assert row["bundles"][0]["unit_resources"] == {"CPU": 1.0} and row["bundles"][0]["node_id"] == nodes[0]["node_id"]
    remove_placement_group(pg)
    tl = get_json(dash, "/api/timeline")
    assert {"fails", "square"} <= {t["name"] for t in tl["tasks"]}
    assert all(t["end_ms"] >= t["start_ms"] for t in tl["tasks"])
    summary = get_json(dash, "/api/summary")
    assert summary["nodes_alive"] == 1 and summary["tasks"]["FAILED"] >= 1 and summary["actors"]["ALIVE"] == 1
    assert summary["hang"] is None and summary["errors"] == []


def test_metrics_have_rays_names_and_the_right_values(dash):
    counter = _workload()  # noqa: F841
    wait_for(lambda: {"Counter.incr", "fails"} <= {t["name"] for t in get_json(dash, "/api/tasks")
                                                  if t["state"] != "RUNNING"} and
             len([t for t in get_json(dash, "/api/tasks") if t["name"] == "square" and t["state"] == "FINISHED"]) == 3,
             20)
    status, headers, body = request(dash, "/metrics", {"Authorization": f"Bearer {_split(dash)[2]}"})
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for fam in prometheus_parser.text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def value(name: str, **labels: str) -> float:
        found = [v for lb, v in samples.get(name, []) if all(lb.get(k) == x for k, x in labels.items())]
        assert len(found) == 1, (name, labels, samples.get(name))
        return found[0]

    assert value("ray_tasks", Name="square", State="FINISHED") == 3
    assert value("ray_tasks", Name="fails", State="FAILED") == 1
    assert value("ray_actors", Name="Counter", State="ALIVE") == 1
    assert value("ray_tasks", Name="Counter.incr", State="FINISHED") == 1  # actor calls count too
    assert value("ray_resources", Name="CPU", State="AVAILABLE") + value("ray_resources", Name="CPU", State="USED") == 2
    # The actor holds no CPU once created (Ray's default for actors), so all 2 are free.
    assert value("ray_resources", Name="CPU", State="AVAILABLE") == 2
    assert value("ray_object_store_memory", Location="MMAP_SHM") >= 0
    assert value("ray_cluster_active_nodes", node_type="head") == 1
    assert value("ray_node_mem_total") == psutil.virtual_memory().total
    assert value("ray_node_cpu_count") == os.cpu_count()
    session = os.path.basename(os.path.normpath(skate.get_runtime_context()._core.session_dir))
    assert all(lb["SessionName"] == session for rows in samples.values() for lb, _ in rows)


def test_what_waits_on_what_and_the_hang_warning(monkeypatch):
    """A driver blocked in get on a task that cannot be scheduled (infeasible), and an actor whose
    calls queue behind a call that never returns: the view shows each, and the hang warning comes."""
    monkeypatch.setenv("SKATE_DASHBOARD_HANG_S", "2")
    ctx = skate.init(num_cpus=1, include_dashboard=True, dashboard_port=0)
    try:
        url = ctx.dashboard_url

        @skate.remote(num_cpus=64)
        def too_big() -> int:
            return 1

        @skate.remote
        class Stuck:
            def block(self) -> None:
                import threading

                threading.Event().wait(60)

            def ping(self) -> int:
                return 1

        stuck = Stuck.remote()
        stuck.block.remote()
        pings = [stuck.ping.remote() for _ in range(3)]
        ref = too_big.remote()
        with pytest.raises(skate.exceptions.GetTimeoutError):
            skate.get(ref, timeout=3)  # blocked long enough to be reported

        view = wait_for(lambda: (v := get_json(url, "/api/waiting")) and v["hang"] and v["demands"] and
                        v["actor_calls"] and v, 30, interval=0.3)
        assert any(d["infeasible"] and d["resources"].get("CPU") == 64 for d in view["demands"])
        calls = [a for a in view["actor_calls"] if a["class_name"] == "Stuck"]
        assert calls and calls[0]["inflight"] + calls[0]["queued"] == 4 and calls[0]["caller_pid"] == os.getpid()
        assert view["hang"]["seconds"] >= 2 and view["hang"]["pending"]
        assert get_json(url, "/api/summary")["hang"]["threshold_s"] == 2

        # A blocked get is reported while it blocks: block in another thread.
        import threading

        def blocked_get() -> None:
            with pytest.raises(skate.exceptions.GetTimeoutError):
                skate.get(ref, timeout=8)

        t = threading.Thread(target=blocked_get, daemon=True)
        t.start()
        view = wait_for(lambda: (v := get_json(url, "/api/waiting")) and v["blocked"] and v, 20, interval=0.3)
        b = view["blocked"][0]
        assert b["pid"] == os.getpid() and b["call"] == "get" and b["who"] == "driver"
        assert [o["name"] for o in b["on"]] == ["too_big"]
        t.join(10)
        del pings
        skate.kill(stuck)
    finally:
        skate.shutdown()


# --- life cycle -----------------------------------------------------------------------------------


def test_include_dashboard_false_starts_no_dashboard():
    ctx = skate.init(num_cpus=1, include_dashboard=False)
    try:
        assert ctx.dashboard_url is None and ctx["webui_url"] is None
        assert dashboard_pids() == []
    finally:
        skate.shutdown()


def test_default_starts_one_like_ray_and_logs_the_link(tmp_path):
    """With skate[dashboard] installed and nothing said, init() starts a dashboard (Ray's default).

    An embedded cluster's dashboard process starts when its first client
    connects: until then the idle cluster has none."""
    env = {k: v for k, v in os.environ.items() if k != "SKATE_INCLUDE_DASHBOARD"}
    code = textwrap.dedent("""
        import psutil, skate, socket, time
        ctx = skate.init(num_cpus=1)
        def dash():
            return any("dashboard" in " ".join(p.cmdline()) for p in psutil.Process().children())
        print("URL", ctx.dashboard_url)
        print("IDLE", dash())
        host, port = ctx.dashboard_url.split("//")[1].split("/")[0].rsplit(":", 1)
        client = socket.create_connection((host, int(port)), timeout=30)  # a first client
        deadline = time.monotonic() + 30
        while not dash() and time.monotonic() < deadline:  # (a condition, with a deadline)
            time.sleep(0.02)
        print("DASH", dash())
        client.close()
        skate.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "IDLE False" in out.stdout and "DASH True" in out.stdout
    url = out.stdout.split("URL ", 1)[1].split()[0]
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    assert f"View the dashboard at {url}" in out.stderr


def test_dashboard_host_and_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = skate.init(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port)
    try:
        assert ctx.dashboard_url.startswith(f"http://127.0.0.1:{port}/?token=")
        assert get_json(ctx.dashboard_url, "/api/summary")["nodes_alive"] == 1
    finally:
        skate.shutdown()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConnectionError, match="already in use"):
            skate.init(num_cpus=1, include_dashboard=True, dashboard_port=busy.getsockname()[1])
    assert not skate.is_initialized()


def test_dashboard_ends_with_the_cluster():
    ctx = skate.init(num_cpus=1, include_dashboard=True, dashboard_port=0)
    try:
        assert dashboard_pids() == []  # an embedded cluster's starts with its first client
        get_json(ctx.dashboard_url, "/api/summary")  # its web server is up
        pids = dashboard_pids()
        assert len(pids) == 1
    finally:
        skate.shutdown()
    wait_for(lambda: pid_gone(pids[0]), 15, what="the dashboard to exit")


@pytest.mark.parametrize("served", [False, True])
def test_dashboard_exits_when_the_control_store_dies(served):
    """Idle (waiting for its first client) or serving, it exits once the control store is gone."""
    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": 0})
    try:
        pid = c._dashboard.proc.pid
        if served:
            get_json(c.dashboard_url, "/api/nodes")
        os.kill(c._gcs_proc.proc.pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(pid), 20, what="the dashboard to exit")
    finally:
        c.shutdown()


def test_joining_drivers_get_the_link_and_cannot_ask_for_another_dashboard():
    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": 0})
    try:
        with pytest.raises(ValueError, match="skate start --head"):
            skate.init(address=c.address, include_dashboard=True)
        ctx = skate.init(address=c.address)
        assert ctx.dashboard_url == c.dashboard_url
        assert ctx.get_node_id() == skate.get_runtime_context().get_node_id()
    finally:
        c.shutdown()


def test_init_context_is_a_context_manager():
    with skate.init(num_cpus=1, include_dashboard=False) as ctx:
        assert skate.is_initialized()
        assert ctx.address_info["gcs_address"] == ctx.gcs_address
    assert not skate.is_initialized()
