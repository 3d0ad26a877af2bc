"""Hosts for real: Linux network namespaces joined by a bridge.

``hosts(n)`` builds ``n`` hosts, each a network namespace with one veth
link to a bridge in the root namespace and the address ``10.77.0.<i>/24``
(``i`` from 1), which exists inside its namespace only.  Names carry this
test process's pid, so parallel runs do not collide.  Everything (the
processes started on the hosts, the namespaces, the bridge, each host's
temp dir) is torn down when the test ends, pass or fail.

Namespaces share the file system, ``/dev/shm`` and Unix sockets; each host
gets its own ``SKATE_TEMP_DIR`` (sessions, cluster records, tokens) so
nothing on one "host" finds another's files by looking in the usual place.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

SUBNET = "10.77.0"
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _why_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace hosts need root (ip netns add)"
    if shutil.which("ip") is None:
        return "network-namespace hosts need the `ip` command (iproute2)"
    name = f"skprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` is not available here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class Host:
    """One host: a namespace, its address and its own temp dir."""

    def __init__(self, net: Hosts, i: int) -> None:
        self.net = net
        self.i = i
        self.ns = f"{net.tag}h{i}"
        self.ip = f"{SUBNET}.{i}"
        self.outside = f"{net.tag}v{i}"  # the veth end on the bridge
        self.temp_dir = tempfile.mkdtemp(prefix=f"skh{i}-")

    def env(self, **extra: str) -> dict:
        env = dict(os.environ, SKATE_TEMP_DIR=self.temp_dir)
        for var in ("SKATE_ADDRESS", "RAY_ADDRESS", "SKATE_CLUSTER_TOKEN"):
            env.pop(var, None)
        env.update(extra)
        return env

    def popen(self, argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        """Starts ``argv`` on this host; stopped at teardown if still running."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            env=env or self.env(),
            stdout=kw.pop("stdout", subprocess.PIPE),
            stderr=kw.pop("stderr", subprocess.STDOUT),
            text=True,
            start_new_session=True,
            **kw,
        )
        self.net.procs.append(p)
        return p

    def run(self, argv: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs ``argv`` on this host to completion."""
        p = self.popen(argv, env=env)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            raise AssertionError(f"{argv} on host {self.i} ran past {timeout} s:\n{out}") from None
        return subprocess.CompletedProcess(argv, p.returncode, out, "")

    def python(self, code: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs a Python program on this host."""
        return self.run([sys.executable, "-c", code], env=env, timeout=timeout)

    def skate(self, *args: str) -> list[str]:
        """The argv of the ``skate`` command with ``args``."""
        return [sys.executable, "-m", "skate.cli", *args]

    def cut(self) -> None:
        """Takes this host's link down: its packets no longer reach anyone."""
        _ip("link", "set", self.outside, "down")


class Hosts:
    """Hosts 1..n on one bridge."""

    def __init__(self, n: int) -> None:
        self.tag = f"sk{os.getpid() % 100000}{next(_counter)}"
        self.bridge = f"{self.tag}br"
        self.procs: list[subprocess.Popen] = []
        self.hosts: list[Host] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            for i in range(1, n + 1):
                h = Host(self, i)
                self.hosts.append(h)
                inside = f"{self.tag}p{i}"
                _ip("netns", "add", h.ns)
                _ip("link", "add", h.outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", h.ns)
                _ip("link", "set", h.outside, "master", self.bridge)
                _ip("link", "set", h.outside, "up")
                _ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", inside)
                _ip("-n", h.ns, "link", "set", inside, "up")
                _ip("-n", h.ns, "link", "set", "lo", "up")
        except BaseException:
            self.teardown()  # half-built: remove what exists
            raise

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i - 1]

    def teardown(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        for h in self.hosts:
            # Whatever still runs in the namespace was started by this test.
            pids = _ip("netns", "pids", h.ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", h.ns, check=False)
            shutil.rmtree(h.temp_dir, ignore_errors=True)
        _ip("link", "del", self.bridge, check=False)


@pytest.fixture
def hosts() -> Iterator:
    """``hosts(n)`` -> ``Hosts`` with hosts 1..n (see the module docstring)."""
    why = _why_unavailable()
    if why:
        pytest.skip(why)
    made: list[Hosts] = []

    def make(n: int) -> Hosts:
        net = Hosts(n)
        made.append(net)
        return net

    try:
        yield make
    finally:
        for net in made:
            net.teardown()
