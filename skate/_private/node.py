"""Starting and stopping a node's daemons; where a cluster's token is kept.

A *session* is one cluster's folder under ``CONFIG.temp_dir`` (owner-only):
the token file, the daemons' sockets, spilled objects.  A head node is the
control store plus a node daemon; other nodes are a node daemon pointed at
the head.  Daemons report readiness on a pipe; an embedded cluster's
daemons also die with the process that started them.

``clusters/<host>_<port>.json`` (under ``CONFIG.temp_dir``, wherever the
session itself lives) maps a control-store address to its session, so
``init(address=...)`` on this machine finds the token by itself.  Clusters
started with ``skate start`` (and ``cluster_utils.Cluster``, like Ray's) are
marked *discoverable*: ``init()`` with no address joins the most recently
started one whose control store is still alive.  Embedded clusters of
``init()`` are never discoverable, so one driver's private cluster is never
joined by another.

Daemons write their output to the session's log folder (see ``logs.py``),
which outlives the session.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from skate._private import logs, private_paths, proctitle
from skate._private.config import CONFIG


@dataclass
class DaemonProcess:
    """A started daemon and what it reported."""

    name: str
    proc: subprocess.Popen
    info: dict = field(default_factory=dict)
    #: Where its stdout and stderr go ("" when inherited).
    log_path: str = ""


def new_session(base: str | None = None, token: bytes | None = None) -> tuple[str, bytes, str]:
    """Creates a session folder and token; returns ``(dir, token, token_file)``.

    ``base`` (default ``CONFIG.temp_dir``) must be this user's own folder;
    ``token`` defaults to a fresh random one.

    Raises:
        UnsafePathError: when ``base`` exists but another user can change it.
    """
    base = private_paths.private_dir(base or CONFIG.temp_dir)
    logs.prune(base, max(CONFIG.logs_kept - 1, 0))
    session_dir = os.path.join(base, f"session_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{os.urandom(3).hex()}")
    os.mkdir(session_dir, 0o700)
    logs.session_logs_dir(session_dir)
    token = token or os.urandom(24).hex().encode()
    token_file = os.path.join(session_dir, "token")
    private_paths.create_private(token_file, token)
    return session_dir, token, token_file


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn(
    name: str,
    args: list[str],
    env: dict | None = None,
    tie_to_parent: bool = True,
    pass_fds: tuple = (),
    logs_dir: str | None = None,
    log_name: str = "",
    detach: bool | None = None,
) -> DaemonProcess:
    """Starts ``python -m <args>`` with a readiness pipe.

    ``tie_to_parent``: the daemon gets SIGTERM when this process exits.
    ``detach``: it runs in a session of its own (no terminal signals);
    default ``not tie_to_parent``.  With ``logs_dir``, its stdout and stderr
    go to ``<logs_dir>/<log_name>-<pid>.log``.
    """
    r, w = os.pipe()
    child_env = {k: v for k, v in (env or os.environ).items() if k not in private_paths.SECRET_ENV}
    flags = []
    if CONFIG.daemon_skip_site:
        # The daemons import from exactly this process's import path, without
        # running site (and every .pth file of the environment) again.
        import skate

        root = os.path.dirname(os.path.dirname(os.path.abspath(skate.__file__)))
        paths = [root] + [p for p in sys.path if p and os.path.isdir(p)]
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        flags = ["-S"]
    child_env["SKATE_READY_FD"] = str(w)
    if tie_to_parent:
        child_env["SKATE_PARENT_PID"] = str(os.getpid())
    log_fd, log_path = -1, ""
    if logs_dir:
        child_env[logs.ENV] = logs_dir
        log_fd, log_path = logs.open_daemon_log(logs_dir, log_name or name)
    try:
        proc = subprocess.Popen(
            [sys.executable, *flags, "-m", *args],
            pass_fds=(w, *pass_fds),
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd if logs_dir else subprocess.DEVNULL,
            stderr=log_fd if logs_dir else None,
            start_new_session=(not tie_to_parent) if detach is None else detach,
        )
    finally:
        os.close(w)
        if logs_dir:
            os.close(log_fd)
    if log_path:
        log_path = logs.name_after_pid(log_path, log_name or name, proc.pid)
    d = DaemonProcess(name, proc, log_path=log_path)
    d.ready_fd = r  # type: ignore[attr-defined]
    return d


def wait_ready(d: DaemonProcess, timeout: float = 30.0) -> dict:
    """Waits for a daemon's readiness line."""
    r = d.ready_fd  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{d.name} did not start within {timeout}s")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                code = d.proc.wait(timeout=5)
                where = "see its output above"
                if d.log_path:
                    last = logs.tail(d.log_path, 5)
                    where = f"its log {d.log_path} ends with:\n{last}" if last else f"its log is {d.log_path}"
                raise RuntimeError(f"{d.name} exited while starting (exit code {code}); {where}")
            data += chunk
    finally:
        os.close(r)
    d.info = json.loads(data)
    return d.info


def default_object_store_memory() -> int:
    """A fraction of RAM, capped by what /dev/shm can hold."""
    mem = psutil.virtual_memory().total * CONFIG.object_store_fraction
    try:
        shm = psutil.disk_usage("/dev/shm").free * 0.9
        mem = min(mem, shm)
    except OSError:
        pass
    return int(mem)


def raylet_args(
    gcs_address: str,
    token_file: str,
    session_dir: str,
    num_cpus: float,
    num_gpus: float,
    resources: dict | None,
    object_store_memory: int,
    head: bool,
    node_ip: str = "127.0.0.1",
    port: int = 0,
    memory: float | None = None,
    labels: dict | None = None,
    worker_ports: tuple[int, int] | None = None,
) -> list[str]:
    """Command-line arguments of a node daemon.

    ``port``: its TCP port (0: any free one); ``worker_ports``: the
    ``(min, max)`` TCP ports its workers listen on (None: any).
    """
    if memory is None:
        memory = psutil.virtual_memory().total * 0.7
    args = [
        "skate._private.raylet.server",
        "--gcs-address", gcs_address,
        "--token-file", token_file,
        "--session-dir", session_dir,
        "--node-ip", node_ip,
        "--port", str(port),
        "--num-cpus", str(num_cpus),
        "--num-gpus", str(num_gpus or 0),
        "--memory", str(memory),
        "--resources", json.dumps(resources or {}),
        "--object-store-memory", str(object_store_memory),
    ]
    if labels:
        args += ["--labels", json.dumps(labels)]
    if worker_ports:
        args += ["--min-worker-port", str(worker_ports[0]), "--max-worker-port", str(worker_ports[1])]
    if head:
        args.append("--head")
    return args


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ConnectionError (one line) when that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        why = "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise ConnectionError(f"cannot listen on {host}:{port}: {why}") from None
    listener.listen(128)
    return listener


def start_head(
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict | None = None,
    object_store_memory: int | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    tie_to_parent: bool = True,
    memory: float | None = None,
    while_starting: Callable[[], None] | None = None,
    discoverable: bool = False,
    temp_dir: str | None = None,
    labels: dict | None = None,
    detach: bool | None = None,
    storage: str | None = None,
    node_manager_port: int = 0,
    worker_ports: tuple[int, int] | None = None,
) -> dict:
    """Starts a control store and a head node daemon in parallel.

    ``while_starting`` runs while they boot (the driver imports its runtime
    then).  ``discoverable``: ``init()`` with no address may join it (CLI
    clusters).  ``temp_dir``: where the session and its logs go (default
    ``CONFIG.temp_dir``).  ``storage`` (default ``CONFIG.gcs_storage``, i.e.
    ``SKATE_GCS_STORAGE``) is where the control store keeps its tables: in
    memory, or ``redis://HOST:PORT``; with Redis a supervisor process starts a
    new control store whenever it dies.  Returns a description with the
    processes, the GCS address and the token.

    Raises:
        ConnectionError: when ``host:port`` cannot be listened on.
        RuntimeError: when a daemon exits while starting.
        ValueError: a storage URL skate cannot use.
    """
    from skate._private.gcs.storage import is_durable

    sweep_dead_stores()
    storage = storage if storage is not None else CONFIG.gcs_storage
    if is_durable(storage):
        from skate._private.gcs.storage import open_storage

        # A wrong URL or an unreachable Redis fails here, with its reason.
        probe = open_storage(storage, "probe")
        probe.close()  # type: ignore[attr-defined]
    # Bind the control store's socket here and hand it over, so its port is
    # known at once (the node daemon starts in parallel) and cannot be taken
    # by someone else in between.
    listener = bind_listener(host, port)
    try:
        session_dir, token, token_file = new_session(temp_dir)
    except BaseException:
        listener.close()
        raise
    logs_dir = logs.session_logs_dir(session_dir)
    gcs_port = listener.getsockname()[1]
    gcs_address = f"{host}:{gcs_port}"
    try:
        server_args = ["--host", host, "--port", str(gcs_port), "--token-file", token_file,
                       "--listen-fd", str(listener.fileno())]
        if is_durable(storage):
            assert storage is not None
            # Restarted when it dies, on the same socket; tables read back from storage.
            args = ["skate._private.gcs.supervisor", "--", *server_args, "--storage", storage]
        else:
            args = ["skate._private.gcs.server", *server_args]
        gcs = spawn(
            "control store",
            args,
            tie_to_parent=tie_to_parent,
            pass_fds=(listener.fileno(),),
            logs_dir=logs_dir,
            log_name="gcs",
            detach=detach,
        )
    finally:
        listener.close()
    raylet = spawn(
        "node daemon",
        raylet_args(
            gcs_address,
            token_file,
            session_dir,
            num_cpus if num_cpus is not None else (os.cpu_count() or 1),
            num_gpus or 0,
            resources,
            object_store_memory or default_object_store_memory(),
            head=True,
            node_ip=host,
            port=node_manager_port,
            memory=memory,
            labels=labels,
            worker_ports=worker_ports,
        ),
        tie_to_parent=tie_to_parent,
        logs_dir=logs_dir,
        log_name="raylet",
        detach=detach,
    )
    try:
        if while_starting is not None:
            while_starting()
        wait_ready(gcs)
        info = wait_ready(raylet)
    except BaseException:
        stop_processes([gcs, raylet])
        remove_session(session_dir)
        raise
    record_cluster(gcs_address, session_dir, token_file, gcs_pid=gcs.proc.pid, discoverable=discoverable)
    return {
        "session_dir": session_dir,
        "logs_dir": logs_dir,
        "token": token,
        "token_file": token_file,
        "gcs_address": gcs_address,
        "processes": [gcs, raylet],
        "raylet": info,
    }


def start_worker_node(
    gcs_address: str,
    token_file: str,
    session_dir: str,
    num_cpus: float,
    num_gpus: float = 0,
    resources: dict | None = None,
    object_store_memory: int | None = None,
    node_ip: str = "127.0.0.1",
    tie_to_parent: bool = True,
    memory: float | None = None,
    labels: dict | None = None,
    detach: bool | None = None,
    node_manager_port: int = 0,
    worker_ports: tuple[int, int] | None = None,
) -> DaemonProcess:
    """Starts one more node daemon joining ``gcs_address`` (ports: see ``raylet_args``)."""
    sweep_dead_stores()
    d = spawn(
        "node daemon",
        raylet_args(
            gcs_address, token_file, session_dir, num_cpus, num_gpus, resources,
            object_store_memory or default_object_store_memory(), head=False, node_ip=node_ip, memory=memory,
            labels=labels, port=node_manager_port, worker_ports=worker_ports,
        ),
        tie_to_parent=tie_to_parent,
        logs_dir=logs.session_logs_dir(session_dir),
        log_name="raylet",
        detach=detach,
    )
    try:
        wait_ready(d)
    except BaseException:
        stop_processes([d])
        raise
    return d


def sweep_dead_stores() -> int:
    """Removes the shared-memory segments of node daemons that died without
    cleaning up (SIGKILL, a crash); returns how many segments."""
    from skate._private.object_store import sweep

    try:
        private_paths.check_dir(CONFIG.temp_dir)
    except (FileNotFoundError, private_paths.UnsafePathError):
        return 0
    return sweep.sweep_all(CONFIG.temp_dir)


def remove_session(session_dir: str) -> None:
    """Deletes a session folder once its daemons are stopped, sweeping first the
    segments of any node daemon of it that died without deleting them (killed,
    or stopped with SIGKILL after the grace period): the folder holds the only
    record of which /dev/shm segments were theirs."""
    import shutil

    from skate._private.object_store import sweep

    sweep.sweep_session(session_dir)
    shutil.rmtree(session_dir, ignore_errors=True)


def stop_processes(procs: list[DaemonProcess], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``grace`` seconds."""
    for d in procs:
        if d.proc.poll() is None:
            try:
                d.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for d in procs:
        try:
            d.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()


def clusters_dir(create: bool = True) -> str:
    """``<temp dir>/clusters``, verified to be this user's own (created when ``create``).

    Raises:
        UnsafePathError: when another user could change it (or the temp dir).
        FileNotFoundError: when it does not exist and ``create`` is False.
    """
    path = os.path.join(CONFIG.temp_dir, "clusters")
    if create:
        private_paths.private_dir(CONFIG.temp_dir)
        return private_paths.private_dir(path)
    private_paths.check_dir(CONFIG.temp_dir)
    private_paths.check_dir(path)
    return path


def _record_path(gcs_address: str, create: bool = True) -> str:
    host, _, port = gcs_address.rpartition(":")
    host = host.strip("[]")
    if host in ("localhost", ""):
        host = "127.0.0.1"
    return os.path.join(clusters_dir(create), f"{host}_{port}.json")


def record_cluster(
    gcs_address: str, session_dir: str, token_file: str, gcs_pid: int | None = None, discoverable: bool = False
) -> None:
    """Remembers where the token of the cluster at ``gcs_address`` is.

    ``discoverable`` clusters are candidates for ``init()`` with no address.
    """
    created = None
    if gcs_pid:
        try:
            created = psutil.Process(gcs_pid).create_time()
        except psutil.Error:
            pass
    rec = {
        "gcs_address": gcs_address,
        "session_dir": session_dir,
        "token_file": token_file,
        "gcs_pid": gcs_pid,
        "gcs_created": created,
        "discoverable": discoverable,
        "started": time.time(),
    }
    private_paths.replace_private(_record_path(gcs_address), json.dumps(rec).encode())


def forget_cluster(gcs_address: str) -> None:
    """Drops the record written by ``record_cluster``."""
    try:
        os.unlink(_record_path(gcs_address, create=False))
    except (FileNotFoundError, private_paths.UnsafePathError):
        pass  # nothing of ours to forget


def _load_record(path: str) -> dict | None:
    """A cluster record, or None when there is none or it names what is gone.

    The record, the folders it is in, the session folder and the token file
    it names must all be this user's own (``UnsafePathError`` otherwise).
    """
    try:
        rec = json.loads(private_paths.read_private(path))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("gcs_address", "session_dir", "token_file")):
        return None
    try:
        private_paths.check_dir(rec["session_dir"])
        private_paths.check_dir(os.path.dirname(rec["token_file"]))
    except FileNotFoundError:
        return None  # a record left by a cluster that is gone
    return rec


def lookup_cluster(address: str) -> dict | None:
    """The record of a cluster by GCS address (``"auto"``: the latest discoverable one alive).

    Raises:
        UnsafePathError: when a record or what it names could be changed by another user.
    """
    if address == "auto":
        return latest_cluster()
    try:
        return _load_record(_record_path(address, create=False))
    except FileNotFoundError:
        return None


def cluster_alive(rec: dict) -> bool:
    """True while the control store of a recorded cluster still runs."""
    pid = rec.get("gcs_pid")
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if rec.get("gcs_created") is not None and abs(p.create_time() - rec["gcs_created"]) > 0.01:
            return False  # the pid now belongs to another process
        return p.status() != psutil.STATUS_ZOMBIE and proctitle.is_skate_process(p.cmdline())
    except psutil.Error:
        return False


def latest_cluster() -> dict | None:
    """The most recently started discoverable cluster (``skate start``) that is alive, if any."""
    recs = []
    try:
        folder = clusters_dir(create=False)
    except FileNotFoundError:
        return None
    for name in os.listdir(folder):
        if not name.endswith(".json") or name == "daemons.json":
            continue
        rec = _load_record(os.path.join(folder, name))
        if rec is not None and rec.get("discoverable"):
            recs.append(rec)
    for rec in sorted(recs, key=lambda r: r.get("started", 0), reverse=True):
        if cluster_alive(rec):
            return rec
    return None
