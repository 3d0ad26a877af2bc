"""The `skate` command: start (Ray's flags, --block), stop, status, --version, errors.

Every test here runs real `skate start` processes in a temp dir of its own
(``SKATE_TEMP_DIR``), so the records they leave can never be joined by the
embedded clusters of other tests; the ``cli`` fixture stops them and checks
that no process or session folder is left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import psutil
import pytest
from conftest import pid_gone, wait_for

from skate._private.config import CONFIG

pytestmark = pytest.mark.timeout(180)

SKATE = [sys.executable, "-m", "skate.cli"]


class CliHost:
    """A temp dir for `skate start` clusters and the environment its commands and drivers get."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="c", dir=CONFIG.temp_dir)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RAY_ADDRESS", "SKATE_ADDRESS", "SKATE_CLUSTER_TOKEN")}
        self.env["SKATE_TEMP_DIR"] = self.dir
        self.seen: set[int] = set()
        self.closed = False

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        out = subprocess.run([*SKATE, *args], capture_output=True, text=True, timeout=120,
                             env={**self.env, **env})
        if check and out.returncode != 0:
            raise AssertionError(f"skate {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        self.note()
        return out

    def head(self, *flags: str, **env: str) -> str:
        """Starts a head on a free port; returns its address."""
        out = self.run("start", "--head", "--port", "0", "--num-cpus", "1", *flags, **env)
        return re.search(r"skate head started at (\S+)", out.stdout).group(1)

    def driver(self, code: str, **env: str) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                             timeout=120, env={**self.env, **env})
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    def started(self) -> list[dict]:
        try:
            with open(os.path.join(self.dir, "clusters", "daemons.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return []

    def note(self) -> set[int]:
        """Remembers every live process of the started clusters (daemons, zygotes, workers)."""
        for e in self.started():
            try:
                p = psutil.Process(e["pid"])
                self.seen.add(p.pid)
                self.seen.update(c.pid for c in p.children(recursive=True))
            except psutil.Error:
                pass
        return self.seen

    def sessions(self, base: str | None = None) -> list[str]:
        base = base or self.dir
        return [n for n in os.listdir(base) if n.startswith("session_")] if os.path.isdir(base) else []

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.note()
        subprocess.run([*SKATE, "stop", "--grace-period", "10"], capture_output=True, timeout=120, env=self.env)
        wait_for(lambda: all(pid_gone(p) for p in self.seen), 30, what="the CLI cluster's processes to exit")
        left = self.sessions()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not left, f"skate stop left session folders: {left}"


def _one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert needle in out.stderr, out.stderr


# --- start / status / stop --------------------------------------------------------------


def test_start_status_driver_stop(cli):
    address = cli.head("--resources", '{"head": 1}')
    other = cli.run("start", "--address", address, "--num-cpus", "1", "--resources", '{"other": 1}')
    assert "joined" in other.stdout
    cli.driver(
        f"""
        import skate
        skate.init(address="{address}")
        assert skate.cluster_resources()["CPU"] == 2, skate.cluster_resources()

        @skate.remote(resources={{"other": 1}})
        def where():
            return skate.get_runtime_context().get_node_id()

        assert skate.get(where.remote()) != skate.get_runtime_context().get_node_id()
        skate.shutdown()
        """
    )
    assert "2 node(s) alive" in cli.run("status", "--address", address).stdout
    # The driver's worker leases go back as the nodes notice it left.
    wait_for(lambda: "CPU: 0 / 2" in cli.run("status").stdout, 30, what="the departed driver's CPUs to show as free")
    pids = cli.note()
    assert pids
    stopped = cli.run("stop")
    assert re.search(r"stopped [1-9]\d* skate processes", stopped.stdout)
    wait_for(lambda: all(pid_gone(p) for p in pids), 30, what="the daemons to exit")
    assert not cli.sessions()


def test_start_needs_head_or_address(cli):
    bad = cli.run("start", check=False)
    assert bad.returncode != 0
    assert "--head or --address" in bad.stderr


def test_join_without_token_is_refused(cli):
    from skate._private import node

    bad = cli.run("start", "--address", f"127.0.0.1:{node.free_port()}", check=False)
    _one_line_error(bad, "SKATE_CLUSTER_TOKEN")


def test_version(cli):
    import skate

    out = cli.run("--version")
    assert out.stdout.strip() == f"skate, version {skate.__version__}"


# --- finding the cluster like Ray ---------------------------------------------------------


def test_init_joins_the_latest_cli_cluster(cli):
    """With a `skate start` cluster up, a plain init() joins it instead of starting its own."""
    cli.head()
    latest = cli.head()
    out = cli.driver(
        """
        import skate
        ctx = skate.init()
        print("joined", ctx.gcs_address)
        """
    )
    assert f"joined {latest}" in out.stdout


def test_address_env_var_beats_the_latest_cluster(cli):
    first = cli.head()
    cli.head()
    code = """
        import skate
        print("joined", skate.init().gcs_address)
        """
    assert f"joined {first}" in cli.driver(code, RAY_ADDRESS=first).stdout
    assert f"joined {first}" in cli.driver(code, SKATE_ADDRESS=first).stdout
    # "auto" in the environment means the latest one again.
    assert f"joined {first}" not in cli.driver(code, RAY_ADDRESS="auto").stdout


def test_embedded_clusters_are_never_the_latest(cli):
    """An embedded init() cluster neither replaces the CLI record nor gets joined by others."""
    head = cli.head()
    embedded = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys, skate
            print("embedded", skate.init("local").gcs_address, flush=True)
            sys.stdin.readline()
            """
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cli.env,
    )
    try:
        line = embedded.stdout.readline()
        assert line.startswith("embedded ") and head not in line, line
        assert f"cluster at {head}:" in cli.run("status").stdout
        out = cli.driver(
            """
            import skate
            print("joined", skate.init(address="auto").gcs_address)
            """
        )
        assert f"joined {head}" in out.stdout
    finally:
        embedded.communicate("\n", timeout=60)
    assert embedded.returncode == 0


def test_stopped_cluster_is_not_joined(cli):
    """After `skate stop`, init() starts its own cluster and init("auto") says none is running."""
    head = cli.head()
    cli.run("stop")
    out = cli.driver(
        """
        import skate
        try:
            skate.init(address="auto")
        except ConnectionError as e:
            print("auto:", e)
        ctx = skate.init()
        print("joined", ctx.gcs_address)
        """
    )
    assert "auto: Could not find any running skate instance" in out.stdout
    assert f"joined {head}" not in out.stdout


def test_dead_head_record_is_ignored(cli):
    """A head that died without `skate stop` leaves a record; init() does not try to join it."""
    head = cli.head()
    gcs = next(e["pid"] for e in cli.started() if e["kind"] == "gcs")
    os.kill(gcs, signal.SIGKILL)
    wait_for(lambda: pid_gone(gcs), 30, what="the control store to die")
    out = cli.driver(
        """
        import skate
        print("joined", skate.init().gcs_address)
        """
    )
    assert "joined" in out.stdout and head not in out.stdout


def test_init_auto_without_any_cluster_raises():
    import skate

    with pytest.raises(ConnectionError, match="Could not find any running skate instance"):
        skate.init(address="auto")
    assert not skate.is_initialized()


def test_suite_environment_names_no_cluster():
    """The suite's own init() calls must never join a cluster named by the caller's environment."""
    for var in ("RAY_ADDRESS", "SKATE_ADDRESS", "SKATE_CLUSTER_TOKEN"):
        assert var not in os.environ


# --- Ray's flags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--include-dashboard=maybe"], "--include-dashboard"),
        (["--labels", "novalue"], "key=value"),
        (["--labels", "ray.io/x=1"], "reserved"),
        (["--resources", "[1]"], "--resources"),
        (["--resources", '{"CPU": 2}'], "--num-cpus"),
        (["--node-ip-address", "0.0.0.0"], "wildcard"),
        (["--node-ip-address", "192.0.2.77"], "not an address of this host"),
        (["--object-manager-port", "8076"], "no separate object manager"),
        (["--min-worker-port", "20000", "--max-worker-port", "10000"], "not a port range"),
        (["--node-manager-port", "70000"], "must be a TCP port"),
    ],
)
def test_flags_that_cannot_be_honoured_are_rejected(cli, flags, needle):
    out = cli.run("start", "--head", "--port", "0", *flags, check=False)
    assert out.returncode != 0
    assert needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not cli.started() and not cli.sessions()


def test_head_starts_the_dashboard_and_prints_its_link(cli):
    """--include-dashboard=true with --dashboard-port: the link works, and `skate stop` stops the dashboard;
    with SKATE_INCLUDE_DASHBOARD unset (the default, like Ray's) the head starts one too."""
    import http.client
    import socket
    import urllib.parse

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--include-dashboard=true",
                  "--dashboard-port", str(port))
    link = re.search(r"dashboard:\s+(\S+)", out.stdout).group(1)
    u = urllib.parse.urlsplit(link)
    assert (u.hostname, u.port) == ("127.0.0.1", port)
    cred = urllib.parse.parse_qs(u.query)["token"][0]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/api/nodes", headers={"Authorization": f"Bearer {cred}"})
    assert conn.getresponse().status == 200
    conn.close()
    joined = cli.driver("""
        import skate
        print("URL", skate.init().dashboard_url)
        """)
    assert f"URL {link}" in joined.stdout
    assert any(e["kind"] == "dashboard" for e in cli.started())
    cli.run("stop")
    wait_for(lambda: not any(e["kind"] == "dashboard" for e in cli.started()), 30)
    env = {k: v for k, v in cli.env.items() if k != "SKATE_INCLUDE_DASHBOARD"}
    out = subprocess.run([*SKATE, "start", "--head", "--port", "0", "--num-cpus", "1"], capture_output=True,
                         text=True, timeout=120, env=env)
    cli.note()
    assert out.returncode == 0 and "dashboard:" in out.stdout, out.stdout + out.stderr
    none = cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--include-dashboard=false",
                   SKATE_INCLUDE_DASHBOARD="1")
    assert "dashboard:" not in none.stdout


def test_dashboard_flags_apply_to_a_head_only(cli):
    head = cli.head()
    for flag in (["--include-dashboard=true"], ["--dashboard-port", "8265"], ["--dashboard-host", "127.0.0.1"]):
        out = cli.run("start", "--address", head, *flag, check=False)
        assert out.returncode != 0 and "applies to a head" in out.stderr, out.stderr


def test_port_is_rejected_for_a_joining_node(cli):
    head = cli.head()
    out = cli.run("start", "--address", head, "--port", "7000", check=False)
    assert out.returncode != 0 and "--port" in out.stderr


def test_accepted_flags_are_honoured(cli):
    """--include-dashboard=false, --disable-usage-stats (a no-op: nothing is collected), --labels,
    --num-gpus, --object-store-memory, --memory, --resources."""
    head = cli.head("--include-dashboard=false", "--disable-usage-stats", "--labels", "zone=a,example.com/tier=gpu",
                    "--num-gpus", "2", "--object-store-memory", str(300 * 2**20), "--resources", '{"disk": 3}',
                    "--memory", str(2**30))
    out = cli.driver(
        """
        import skate
        skate.init()
        print("labels", sorted(skate.nodes()[0]["Labels"].items()))
        r = skate.cluster_resources()
        print("res", r["GPU"], r["disk"], r["object_store_memory"], r["memory"])
        """
    )
    assert "labels [('example.com/tier', 'gpu'), ('zone', 'a')]" in out.stdout
    assert f"res 2.0 3.0 {float(300 * 2**20)} {float(2**30)}" in out.stdout
    status = cli.run("status", "--address", head).stdout
    assert "labels: example.com/tier=gpu,zone=a" in status
    assert "--disable-usage-stats" in cli.run("start", "--help").stdout


def test_temp_dir_flag(cli):
    """Sessions and logs go under --temp-dir; init() and `skate stop` still find the cluster."""
    other = tempfile.mkdtemp(prefix="t", dir=CONFIG.temp_dir)
    try:
        head = cli.head("--temp-dir", other)
        assert cli.sessions(other) and not cli.sessions()
        out = cli.driver(
            """
            import skate
            print("joined", skate.init().gcs_address)
            """
        )
        assert f"joined {head}" in out.stdout
        cli.run("stop")
        assert not cli.sessions(other)
        assert os.listdir(os.path.join(other, "logs"))
    finally:
        cli.close()  # stop before removing the folder the daemons use
        shutil.rmtree(other, ignore_errors=True)


def test_head_on_loopback_does_not_offer_a_loopback_address_to_other_hosts(cli):
    out = cli.run("start", "--head", "--port", "0", "--num-cpus", "1").stdout
    assert "export SKATE_CLUSTER_TOKEN" not in out
    assert "listens on 127.0.0.1 only" in out and "--node-ip-address" in out


def test_head_on_a_routable_address_prints_it_for_other_hosts(cli):
    ips = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family.name == "AF_INET" and not a.address.startswith("127.")]
    if not ips:
        pytest.skip("this machine has no non-loopback IPv4 address")
    out = cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--node-ip-address", ips[0]).stdout
    other_hosts = out[out.index("from another host"):]
    assert "export SKATE_CLUSTER_TOKEN=" in other_hosts
    assert f"skate start --address {ips[0]}:" in other_hosts
    assert "127.0.0.1" not in other_hosts


# --- one-line errors ---------------------------------------------------------------------------


def test_busy_port_is_a_one_line_error(cli):
    head = cli.head()
    port = head.rpartition(":")[2]
    _one_line_error(cli.run("start", "--head", "--port", port, check=False), "already in use")
    assert len(cli.sessions()) == 1, "the failed start must not leave a session behind"


def test_status_without_a_cluster_is_a_one_line_error(cli):
    _one_line_error(cli.run("status", check=False), "Could not find any running skate instance")


def test_bad_address_is_a_one_line_error(cli):
    _one_line_error(cli.run("status", "--address", "nonsense", check=False), "malformed address")
    _one_line_error(cli.run("start", "--address", "nonsense", check=False), "malformed address")
    _one_line_error(cli.run("status", "--address", "ray://h:10001", check=False), "ray://")


def test_wrong_token_is_a_one_line_error(cli):
    head = cli.head()
    _one_line_error(cli.run("status", check=False, SKATE_CLUSTER_TOKEN="wrong"), "rejected")
    _one_line_error(cli.run("start", "--address", head, check=False, SKATE_CLUSTER_TOKEN="wrong"), "rejected")


def test_unknown_ray_verbs_are_not_faked(cli):
    for verb in ("up", "attach", "exec", "kuberay"):
        out = cli.run(verb, check=False)
        assert out.returncode == 2 and "No such command" in out.stderr


# --- --block -------------------------------------------------------------------------------------


def _start_blocking(cli: CliHost) -> tuple[subprocess.Popen, str]:
    log = os.path.join(cli.dir, "block.out")
    with open(log, "w") as f:
        proc = subprocess.Popen([*SKATE, "start", "--head", "--port", "0", "--num-cpus", "1", "--block"],
                                stdout=f, stderr=subprocess.STDOUT, env=cli.env)
    wait_for(lambda: any(e["kind"] == "supervisor" for e in cli.started()) or proc.poll() is not None, 60,
             what="skate start --block to start its daemons")
    assert proc.poll() is None, open(log).read()
    cli.note()
    return proc, log


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "skate stop"])
def test_block_stops_its_daemons_when_told(cli, how):
    proc, log = _start_blocking(cli)
    daemons = [e["pid"] for e in cli.started() if e["kind"] != "supervisor"]
    if how == "skate stop":
        cli.run("stop")
    else:
        proc.send_signal(getattr(signal, how))
    assert proc.wait(60) == 0, open(log).read()
    wait_for(lambda: all(pid_gone(p) for p in daemons), 30, what="the daemons to exit")
    assert not cli.sessions()


def test_block_exits_nonzero_when_a_daemon_dies(cli):
    proc, log = _start_blocking(cli)
    raylet = next(e["pid"] for e in cli.started() if e["kind"] == "raylet")
    gcs = next(e["pid"] for e in cli.started() if e["kind"] == "gcs")
    os.kill(raylet, signal.SIGKILL)
    assert proc.wait(60) == 1
    text = open(log).read()
    assert f"node daemon (pid {raylet}) killed by SIGKILL" in text, text
    wait_for(lambda: pid_gone(gcs), 30, what="the control store to be stopped too")


# --- status demands ----------------------------------------------------------------------------


def test_status_shows_pending_and_infeasible_demands(cli, tmp_path):
    head = cli.head()
    gate = tmp_path / "gate"
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            f"""
            import os, sys, time, skate
            skate.init()

            @skate.remote
            def hold(path):
                while not os.path.exists(path):
                    time.sleep(0.01)

            held = hold.remote({str(gate)!r})
            pending = hold.remote({str(gate)!r})
            huge = hold.options(num_cpus=64).remote({str(gate)!r})
            print("submitted", flush=True)
            sys.stdin.readline()
            """
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env,
    )
    try:
        assert driver.stdout.readline().strip() == "submitted"
        def both_shown() -> str | None:
            s = cli.run("status", "--address", head).stdout
            return s if "pending" in s and "infeasible" in s else None

        status = wait_for(both_shown, 30, what="the demands to show")
        assert '{"CPU": 1.0}: 1 pending' in status, status
        assert '{"CPU": 64.0}: 1 infeasible' in status, status
    finally:
        gate.touch()
        driver.communicate("\n", timeout=60)
    wait_for(lambda: "(no resource demands)" in cli.run("status").stdout, 30, what="the demands to clear")


# --- logs --------------------------------------------------------------------------------------


def test_logs_survive_stop(cli):
    """Every process has a log under <temp dir>/logs/<session>/ and `skate stop` keeps them."""
    cli.head()
    cli.driver(
        """
        import skate
        skate.init()

        @skate.remote
        def speak():
            print("hello-from-a-worker")
            return 1

        assert skate.get(speak.remote()) == 1
        """
    )
    logs_root = os.path.join(cli.dir, "logs")
    (session,) = os.listdir(logs_root)
    folder = os.path.join(logs_root, session)
    wait_for(lambda: any(n.startswith("worker-") for n in os.listdir(folder)), 30, what="a worker log")
    cli.run("stop")
    assert not cli.sessions(), "the session folder (sockets, token) goes on stop"
    names = os.listdir(folder)
    for kind in ("gcs", "raylet", "zygote"):
        assert any(re.fullmatch(rf"{kind}-\d+\.log", n) for n in names), names
    outs = [n for n in names if re.fullmatch(r"worker-\d+\.out", n)]
    assert any("hello-from-a-worker" in open(os.path.join(folder, n)).read() for n in outs)


# --- list / summary / timeline ----------------------------------------------------------------


def test_list_summary_and_timeline(cli, tmp_path):
    address = cli.head()
    cli.driver(
        f"""
        import skate
        skate.init(address="{address}")

        @skate.remote
        def square(x):
            return x * x

        @skate.remote
        class Keeper:
            def ping(self):
                return 1

        keeper = Keeper.options(name="keeper", lifetime="detached").remote()
        assert skate.get([square.remote(i) for i in range(3)] + [keeper.ping.remote()]) == [0, 1, 4, 1]
        skate.shutdown()
        """
    )

    def finished() -> bool:
        out = cli.run("list", "tasks", "--filter", "name=square", "--format", "json").stdout
        return len([t for t in json.loads(out) if t["state"] == "FINISHED"]) == 3

    wait_for(finished, 30, what="three finished tasks to be listed")
    table = cli.run("list", "tasks", "--filter", "name=square").stdout.splitlines()
    assert table[0].split()[:3] == ["TASK_ID", "NAME", "STATE"] and len(table) == 4
    actors = json.loads(cli.run("list", "actors", "--format", "json").stdout)
    assert [(a["class_name"], a["state"], a["name"]) for a in actors] == [("Keeper", "ALIVE", "keeper")]
    assert json.loads(cli.run("list", "nodes", "--format", "json").stdout)[0]["state"] == "ALIVE"
    assert len(json.loads(cli.run("list", "jobs", "--format", "json").stdout)) >= 1
    summary = json.loads(cli.run("summary", "tasks", "--format", "json").stdout)
    assert any(row["name"].endswith("square") and row["FINISHED"] == 3 for row in summary)
    trace = tmp_path / "trace.json"
    assert "Trace written" in cli.run("timeline", "--output", str(trace)).stdout
    assert len([e for e in json.loads(trace.read_text()) if e["name"] == "square"]) == 3
    bad = cli.run("list", "tasks", "--filter", "nonsense", check=False)
    _one_line_error(bad, "key=value")


def test_list_placement_groups_and_status_shows_waiting_ones(cli):
    address = cli.head()
    cli.driver(
        f"""
        import skate
        from skate.util import placement_group
        skate.init(address="{address}")
        assert placement_group([{{"CPU": 1}}], name="kept", lifetime="detached").wait(30)
        placement_group([{{"CPU": 1000}}], name="huge", lifetime="detached")
        skate.shutdown()
        """
    )
    rows = json.loads(cli.run("list", "placement-groups", "--format", "json").stdout)
    assert sorted((r["name"], r["state"]) for r in rows) == [("huge", "PENDING"), ("kept", "CREATED")]
    status = cli.run("status").stdout
    assert "placement groups waiting:" in status and "'huge' PACK" in status and "infeasible" in status
    assert "_group_" not in status.split("demands:")[0]  # bundle resources are not listed as node resources
