"""What the ``skate`` command needs beyond the public API.

* parsing Ray's ``skate start`` flag values (``--resources``, ``--labels``);
* ``daemons.json``: the processes ``skate start`` left running on this
  machine (and any ``--block`` supervisor), so ``skate stop`` finds them;
* ``supervise``: ``skate start --block`` staying in the foreground until a
  signal or a daemon's death;
* ``cluster_status``: nodes, resources and queued demands, asked of the
  control store and each node daemon directly (no driver, no job).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import psutil

from skate._private import discovery, hostaddr, logs, node, private_paths, proctitle, wire
from skate._private.raylet.worker_pool import describe_exit

# Label keys and values, as Kubernetes (and Ray) allow them.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_resources(text: str) -> dict[str, float]:
    """``--resources``: a JSON object of custom resource amounts.

    Raises:
        ValueError: not a JSON object of numbers, or it names CPU/GPU
            (``--num-cpus``/``--num-gpus`` say those).
    """
    try:
        res = json.loads(text)
    except ValueError:
        res = None
    if not isinstance(res, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in res.values()
    ):
        raise ValueError(f"--resources must be a JSON object of non-negative numbers, e.g. '{{\"disk\": 2}}'; got {text!r}")
    for key in ("CPU", "GPU"):
        if key in res:
            raise ValueError(f"--resources may not name {key}; use --num-{key.lower()}s instead")
    return {str(k): float(v) for k, v in res.items()}


def parse_labels(text: str) -> dict[str, str]:
    """``--labels``: ``key1=value1,key2=value2`` (Kubernetes label syntax, like Ray's).

    Raises:
        ValueError: a malformed pair, key or value, or a key under the
            reserved ``ray.io/`` prefix.
    """
    labels: dict[str, str] = {}
    if not text.strip():
        return labels
    for pair in text.split(","):
        key, sep, value = pair.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"--labels takes key=value pairs separated by commas, e.g. 'zone=a,tier=gpu'; got {text!r}")
        prefix, slash, name = key.rpartition("/")
        if slash and (not _LABEL_PREFIX.match(prefix) or len(prefix) > 253):
            raise ValueError(f"label key {key!r}: the prefix must be a DNS subdomain")
        if prefix == "ray.io" or prefix.endswith(".ray.io"):
            raise ValueError(f"label key {key!r}: the ray.io/ prefix is reserved")
        if not _LABEL_NAME.match(name):
            raise ValueError(f"label key {key!r}: at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric")
        if value and not _LABEL_NAME.match(value):
            raise ValueError(f"label value {value!r}: at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric")
        labels[key] = value
    return labels


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach."""
    return host in ("localhost", "::1") or host.startswith("127.")


# --- daemons.json -----------------------------------------------------------------------


def _pids_file() -> str:
    return os.path.join(node.clusters_dir(), "daemons.json")


def load_started() -> list[dict]:
    """The processes recorded by ``remember`` (those of ``skate start`` on this machine)."""
    try:
        known = json.loads(private_paths.read_private(_pids_file()))
    except (OSError, ValueError):
        return []
    if not isinstance(known, list):
        return []
    return [e for e in known if isinstance(e, dict) and "pid" in e]


def _save(known: list[dict]) -> None:
    private_paths.replace_private(_pids_file(), json.dumps(known).encode())


def remember(procs: list[tuple[int, str]], session_dir: str, gcs_address: str | None = None) -> None:
    """Records started processes as ``(pid, kind)``; kind is gcs, raylet or supervisor."""
    known = load_started()
    for pid, kind in procs:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            continue
        known.append({"pid": pid, "kind": kind, "created": created, "session_dir": session_dir,
                      "gcs_address": gcs_address})
    _save(known)


def forget(pids: set[int]) -> None:
    """Drops processes from ``daemons.json``."""
    _save([e for e in load_started() if e["pid"] not in pids])


def _live(entry: dict) -> psutil.Process | None:
    try:
        p = psutil.Process(entry["pid"])
        if entry.get("created") is not None and abs(p.create_time() - entry["created"]) > 0.01:
            return None  # the pid was reused
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        if entry.get("kind") != "supervisor" and not proctitle.is_skate_process(p.cmdline()):
            return None
        return p
    except psutil.Error:
        return None


def stop_started(force: bool, grace_s: float) -> int:
    """Stops what ``skate start`` left running here; returns how many processes were running.

    ``--block`` supervisors go first (they stop their own daemons), then
    node daemons, then control stores; whatever is alive after ``grace_s``
    seconds gets SIGKILL.  Session folders and cluster records go too; the
    log folders stay.
    """
    known = load_started()
    order = {"supervisor": 0, "raylet": 1, "gcs": 2}
    known.sort(key=lambda e: order.get(e.get("kind", "raylet"), 1))
    count = sum(1 for e in known if _live(e) is not None)
    for kind in ("supervisor", "dashboard", "raylet", "gcs"):
        procs = [p for e in known if e.get("kind", "raylet") == kind and (p := _live(e)) is not None]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL if force else signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
    node.sweep_dead_stores()  # what daemons killed with --force left in /dev/shm
    for e in known:
        node.remove_session(e["session_dir"])
        if e.get("gcs_address"):
            node.forget_cluster(e["gcs_address"])
    forget({e["pid"] for e in known})
    return count


# --- --block ------------------------------------------------------------------------------


def supervise(procs: list[node.DaemonProcess], say: Callable[[str], None]) -> int:
    """Waits until a signal (returns 0) or a daemon's death (returns 1); stops the rest either way.

    The daemons were started tied to this process, so they go with it even
    if it is killed outright.
    """
    wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        while True:
            dead = [d for d in procs if d.proc.poll() is not None]
            if dead:
                for d in dead:
                    say(f"skate: the {d.name} (pid {d.proc.pid}) {describe_exit(d.proc.returncode)}; "
                        f"its log is {d.log_path}")
                    last = logs.tail(d.log_path, 10) if d.log_path else ""
                    if last:
                        say(last)
                node.stop_processes([d for d in procs if d not in dead])
                return 1
            info = signal.sigtimedwait(wanted, 5.0)
            if info is not None and info.si_signo != signal.SIGCHLD:
                # Node daemons first, so they leave the control store in order.
                node.stop_processes([d for d in procs if d.name != "control store"])
                node.stop_processes([d for d in procs if d.name == "control store"])
                return 0
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)


# --- status -------------------------------------------------------------------------------


def cluster_status(address: str | None) -> dict:
    """Nodes, resources and queued demands of the cluster at ``address`` (resolved like ``init``).

    Raises:
        ConnectionError: no cluster found, unreachable, or the token is refused.
    """
    gcs_address = discovery.resolve_address(address or "auto")
    if gcs_address is None:  # "local"
        raise ConnectionError(discovery.NOT_FOUND)
    target = discovery.credentials(gcs_address)
    nodes = discovery.request(gcs_address, target.token, "get_nodes", expect=wire.GCS_IDENTITY)
    demands: dict[tuple[str, bool], int] = {}
    for n in nodes:
        if not n["alive"]:
            continue
        addr: Any = hostaddr.local_target(n["uds"], n["ip"], n["port"])
        try:
            stats = discovery.request(addr, target.token, "node_stats", timeout=5.0, expect=n["node_id"])
        except ConnectionError:
            continue  # it went away in between
        for shape, infeasible in stats.get("demands", ()):
            key = (json.dumps(shape, sort_keys=True), bool(infeasible))
            demands[key] = demands.get(key, 0) + 1
    groups = discovery.request(gcs_address, target.token, "list_placement_groups", expect=wire.GCS_IDENTITY)
    return {"gcs_address": gcs_address, "nodes": nodes, "demands": demands, "placement_groups": groups}


def format_status(st: dict) -> list[str]:
    """The lines ``skate status`` prints."""
    nodes = st["nodes"]
    alive = [n for n in nodes if n["alive"]]
    out = [f"cluster at {st['gcs_address']}: {len(alive)} node(s) alive, {len(nodes) - len(alive)} dead"]
    total: dict[str, float] = {}
    free: dict[str, float] = {}
    for n in nodes:
        state = "ALIVE" if n["alive"] else "DEAD"
        head = " (head)" if n.get("is_head") else ""
        labels = n.get("labels") or {}
        tag = f"  labels: {','.join(f'{k}={v}' for k, v in sorted(labels.items()))}" if labels else ""
        out.append(f"  {n['node_id'].hex()[:12]} {n['ip']}:{n['port']} {state}{head}{tag}")
        if n["alive"]:
            for k, v in n["resources"].items():
                total[k] = total.get(k, 0.0) + v
            for k, v in n.get("available", n["resources"]).items():
                free[k] = free.get(k, 0.0) + v
    out.append("resources (used / total):")
    for k in sorted(total):
        if k.startswith("node:") or total[k] <= 0 or "_group_" in k:  # (placement groups: below)
            continue
        used = total[k] - max(free.get(k, 0.0), 0.0)
        if k in ("memory", "object_store_memory"):
            out.append(f"  {k}: {used / 2**30:.2f} / {total[k] / 2**30:.2f} GiB")
        else:
            out.append(f"  {k}: {used:g} / {total[k]:g}")
    out.append("demands:")
    if not st["demands"]:
        out.append("  (no resource demands)")
    for (shape, infeasible), count in sorted(st["demands"].items(), key=lambda kv: kv[0]):
        what = "infeasible (no node has that much; waits for one that fits)" if infeasible else "pending"
        out.append(f"  {shape}: {count} {what}")
    waiting = [g for g in st.get("placement_groups", ()) if g["state"] in ("PENDING", "RESCHEDULING")]
    if waiting:
        out.append("placement groups waiting:")
    for g in waiting:
        what = "infeasible (no set of nodes can hold it; waits for nodes that fit)" if g["infeasible"] else g["state"].lower()
        name = f" {g['name']!r}" if g["name"] else ""
        out.append(f"  {g['pg_id'].hex()}{name} {g['strategy']} {g['bundles']}: {what}")
    return out


def echo_err(text: str) -> None:
    """Prints a line on stderr."""
    print(text, file=sys.stderr, flush=True)


def check_ports(node_manager_port: int, object_manager_port: int, min_worker_port: int, max_worker_port: int) -> tuple[int, int] | None:
    """Validates ``skate start``'s port flags; returns the workers' port range (None: any port).

    Raises:
        click.UsageError: for a port out of range, an empty worker range, or
            an object manager port (skate has none of its own).
    """
    import click

    if object_manager_port:
        raise click.UsageError(
            "skate has no separate object manager: objects move between nodes over the node daemon's "
            "port, so give --node-manager-port (and open that port) instead of --object-manager-port"
        )
    for flag, v in (("--node-manager-port", node_manager_port), ("--min-worker-port", min_worker_port),
                    ("--max-worker-port", max_worker_port)):
        if not 0 <= v <= 65535:
            raise click.UsageError(f"{flag} must be a TCP port (0..65535), not {v}")
    if min_worker_port == 0 and max_worker_port == 0:
        return None
    if min_worker_port == 0 or max_worker_port < min_worker_port:
        raise click.UsageError(
            f"--min-worker-port {min_worker_port} / --max-worker-port {max_worker_port} is not a port range "
            "(both 0: any free port)"
        )
    return min_worker_port, max_worker_port


# --- list / summary ------------------------------------------------------------------------


def state_address(address: str | None) -> str:
    """The control store the state commands ask: ``--address``, else the latest cluster here."""
    gcs_address = discovery.resolve_address(address or "auto")
    if gcs_address is None:
        raise ConnectionError(discovery.NOT_FOUND)
    return gcs_address


def parse_filters(filters: tuple) -> list:
    """``("state=FAILED", "name!=f")`` as ``[("state", "=", "FAILED"), ("name", "!=", "f")]``."""
    out = []
    for f in filters:
        key, op, value = (f.partition("!=") if "!=" in f else f.partition("="))
        if not op or not key:
            raise ValueError(f"a filter is key=value or key!=value, not {f!r}")
        out.append((key.strip(), op, value.strip()))
    return out


def format_records(rows: list[dict], fmt: str) -> list[str]:
    """Records as lines: an aligned table, JSON or YAML."""
    if fmt == "json":
        return [json.dumps(rows, indent=2, default=str)]
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise ValueError("--format yaml needs PyYAML (pip install pyyaml); use --format json") from None
        return [yaml.safe_dump(rows, sort_keys=False).rstrip("\n")]
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    cells = [[_cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.upper().ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return lines


def _cell(v: object) -> str:
    text = "" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."
