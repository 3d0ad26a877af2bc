"""Starting and stopping a node's daemons; where a cluster's token is kept.

A *session* is one cluster's folder under ``CONFIG.temp_dir`` (owner-only):
the token file, the daemons' sockets, spilled objects.  A head node is the
control store plus a node daemon; other nodes are a node daemon pointed at
the head.  Daemons report readiness on a pipe; an embedded cluster's
daemons also die with the process that started them.

``clusters/<host>_<port>.json`` maps a control-store address to its session,
so ``init(address=...)`` on this machine finds the token by itself.
"""

from __future__ import annotations

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

from skate._private import private_paths
from skate._private.config import CONFIG


@dataclass
class DaemonProcess:
    """A started daemon and what it reported."""

    name: str
    proc: subprocess.Popen
    info: dict = field(default_factory=dict)


def new_session(base: str | None = None, token: bytes | None = None) -> tuple[str, bytes, str]:
    """Creates a session folder and token; returns ``(dir, token, token_file)``.

    ``base`` (default ``CONFIG.temp_dir``) must be this user's own folder;
    ``token`` defaults to a fresh random one.

    Raises:
        UnsafePathError: when ``base`` exists but another user can change it.
    """
    base = private_paths.private_dir(base or CONFIG.temp_dir)
    session_dir = os.path.join(base, f"session_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{os.urandom(3).hex()}")
    os.mkdir(session_dir, 0o700)
    token = token or os.urandom(24).hex().encode()
    token_file = os.path.join(session_dir, "token")
    private_paths.create_private(token_file, token)
    return session_dir, token, token_file


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn(name: str, args: list[str], env: dict | None = None, tie_to_parent: bool = True, log_path: str | None = None, pass_fds: tuple = ()) -> DaemonProcess:
    """Starts ``python -m <args>`` with a readiness pipe."""
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
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [sys.executable, *flags, "-m", *args],
            pass_fds=(w, *pass_fds),
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out if log_path else None,
            start_new_session=not tie_to_parent,
        )
    finally:
        os.close(w)
        if log_path:
            out.close()
    d = DaemonProcess(name, proc)
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
                raise RuntimeError(f"{d.name} exited while starting (exit code {code}); see its output above")
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
) -> list[str]:
    """Command-line arguments of a node daemon."""
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
    if head:
        args.append("--head")
    return args


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
    storage: str | None = None,
) -> dict:
    """Starts a control store and a head node daemon in parallel.

    ``while_starting`` runs while they boot (the driver imports its runtime
    then).  ``storage`` (default ``CONFIG.gcs_storage``, i.e.
    ``SKATE_GCS_STORAGE``) is where the control store keeps its tables:
    in memory, or ``redis://HOST:PORT``; with Redis a supervisor process
    starts a new control store whenever it dies.  Returns a description
    with the processes, the GCS address and the token.
    """
    from skate._private.gcs.storage import is_durable

    sweep_dead_stores()
    storage = storage if storage is not None else CONFIG.gcs_storage
    if is_durable(storage):
        from skate._private.gcs.storage import open_storage

        # A wrong URL or an unreachable Redis fails here, with its reason.
        probe = open_storage(storage, "probe")
        probe.close()  # type: ignore[attr-defined]
    session_dir, token, token_file = new_session()
    # Bind the control store's socket here and hand it over, so its port is
    # known at once (the node daemon starts in parallel) and cannot be taken
    # by someone else in between.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        raise ConnectionError(f"cannot listen on {host}:{port}: {e}") from None
    listener.listen(128)
    gcs_port = listener.getsockname()[1]
    gcs_address = f"{host}:{gcs_port}"
    try:
        log_path = None if tie_to_parent else os.path.join(session_dir, "gcs.log")
        server_args = ["--host", host, "--port", str(gcs_port), "--token-file", token_file,
                       "--listen-fd", str(listener.fileno())]
        if is_durable(storage):
            assert storage is not None
            # Restarted when it dies, on the same socket; tables read back from storage.
            args = ["skate._private.gcs.supervisor", *(["--log-path", log_path] if log_path else []),
                    "--", *server_args, "--storage", storage]
        else:
            args = ["skate._private.gcs.server", *server_args]
        gcs = spawn("control store", args, tie_to_parent=tie_to_parent, log_path=log_path,
                    pass_fds=(listener.fileno(),))
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
            memory=memory,
        ),
        tie_to_parent=tie_to_parent,
        log_path=None if tie_to_parent else os.path.join(session_dir, "raylet.log"),
    )
    try:
        if while_starting is not None:
            while_starting()
        wait_ready(gcs)
        info = wait_ready(raylet)
    except BaseException:
        stop_processes([gcs, raylet])
        raise
    record_cluster(gcs_address, session_dir, token_file)
    return {
        "session_dir": session_dir,
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
) -> DaemonProcess:
    """Starts one more node daemon joining ``gcs_address``."""
    sweep_dead_stores()
    d = spawn(
        "node daemon",
        raylet_args(
            gcs_address, token_file, session_dir, num_cpus, num_gpus, resources,
            object_store_memory or default_object_store_memory(), head=False, node_ip=node_ip, memory=memory,
        ),
        tie_to_parent=tie_to_parent,
        log_path=None if tie_to_parent else os.path.join(session_dir, f"raylet-{time.time_ns()}.log"),
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
    """``<temp dir>/clusters``, verified to be this user's own (created when ``create``)."""
    path = os.path.join(CONFIG.temp_dir, "clusters")
    if create:
        private_paths.private_dir(CONFIG.temp_dir)
        return private_paths.private_dir(path)
    private_paths.check_dir(CONFIG.temp_dir)
    private_paths.check_dir(path)
    return path


def record_cluster(gcs_address: str, session_dir: str, token_file: str) -> None:
    """Remembers where the token of the cluster at ``gcs_address`` is."""
    host, _, port = gcs_address.rpartition(":")
    folder = clusters_dir()
    data = json.dumps({"gcs_address": gcs_address, "session_dir": session_dir, "token_file": token_file}).encode()
    private_paths.replace_private(os.path.join(folder, f"{host}_{port}.json"), data)
    private_paths.replace_private(os.path.join(folder, "latest.json"), data)


def forget_cluster(gcs_address: str) -> None:
    """Drops the record written by ``record_cluster``."""
    host, _, port = gcs_address.rpartition(":")
    try:
        folder = clusters_dir(create=False)
    except (FileNotFoundError, private_paths.UnsafePathError):
        return  # nothing of ours to forget
    try:
        os.unlink(os.path.join(folder, f"{host}_{port}.json"))
    except FileNotFoundError:
        pass
    latest = os.path.join(folder, "latest.json")
    try:
        if json.loads(private_paths.read_private(latest)).get("gcs_address") == gcs_address:
            os.unlink(latest)
    except (OSError, ValueError):
        pass


def lookup_cluster(address: str) -> dict | None:
    """The record of a cluster by GCS address (``"auto"``: the latest started here).

    Returns None when there is none.  The record, the folders it is in, the
    session folder and the token file it names must all be this user's own.

    Raises:
        UnsafePathError: when one of them could be changed by another user.
    """
    if address == "auto":
        name = "latest.json"
    else:
        host, _, port = address.rpartition(":")
        if host in ("localhost", ""):
            host = "127.0.0.1"
        name = f"{host}_{port}.json"
    try:
        path = os.path.join(clusters_dir(create=False), name)
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
