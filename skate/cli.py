"""The ``skate`` command: one small function per subcommand over the public API."""

from __future__ import annotations

import json
import os
import signal
import sys

import click


@click.group()
def main() -> None:
    """skate: a distributed execution framework with Ray's API."""


def _pids_file() -> str:
    from skate._private import node

    return os.path.join(node.clusters_dir(), "daemons.json")


def _known_daemons() -> list:
    from skate._private import private_paths

    try:
        known = json.loads(private_paths.read_private(_pids_file()))
    except (OSError, ValueError):
        return []
    return known if isinstance(known, list) else []


def _remember(pids: list[int], session_dir: str) -> None:
    from skate._private import private_paths

    known = _known_daemons() + [{"pid": p, "session_dir": session_dir} for p in pids]
    private_paths.replace_private(_pids_file(), json.dumps(known).encode())


@main.command()
@click.option("--head", is_flag=True, help="Start the head node (control store + node daemon).")
@click.option("--address", default=None, help="Join the cluster whose head listens at HOST:PORT.")
@click.option("--port", type=int, default=6379, show_default=True, help="Control-store port of a head.")
@click.option("--num-cpus", type=float, default=None, help="CPUs of this node (default: all cores).")
@click.option("--num-gpus", type=float, default=0, help="GPUs of this node.")
@click.option("--resources", default="{}", help='Custom resources as JSON, e.g. \'{"disk": 2}\'.')
@click.option("--object-store-memory", type=int, default=None, help="Shared-memory bytes for objects.")
@click.option("--node-ip-address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--storage", default=None,
              help="Where a head's control store keeps its tables: 'memory' (default; SKATE_GCS_STORAGE) "
                   "or redis://HOST:PORT (the control store then survives restarts).")
def start(head: bool, address: str | None, port: int, num_cpus: float | None, num_gpus: float,
          resources: str, object_store_memory: int | None, node_ip_address: str, storage: str | None) -> None:
    """Starts node daemons that outlive this command (stop them with `skate stop`)."""
    from skate._private import node

    res = json.loads(resources)
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    if head == bool(address):
        raise click.UsageError("give exactly one of --head or --address")
    if storage is not None and not head:
        raise click.UsageError("--storage applies to a head (--head) only")
    if head:
        try:
            info = node.start_head(cpus, num_gpus, res, object_store_memory, host=node_ip_address, port=port,
                                   tie_to_parent=False, storage=storage)
        except (ValueError, ImportError, ConnectionError) as e:
            raise click.ClickException(str(e)) from None
        _remember([d.proc.pid for d in info["processes"]], info["session_dir"])
        click.echo(f"skate head started at {info['gcs_address']}")
        click.echo(f"  connect a driver:   skate.init(address=\"{info['gcs_address']}\")")
        click.echo(f"  add a node:         skate start --address {info['gcs_address']}")
        click.echo(f"  from another host:  export SKATE_CLUSTER_TOKEN=<the contents of {info['token_file']}>")
        return
    rec = node.lookup_cluster(address)
    token = os.environ.get("SKATE_CLUSTER_TOKEN")
    if rec is not None:
        token_file, session_dir = rec["token_file"], rec["session_dir"]
    elif token:
        session_dir, _, token_file = node.new_session(token=token.encode())
    else:
        raise click.ClickException(f"no token for the cluster at {address}: set SKATE_CLUSTER_TOKEN")
    d = node.start_worker_node(rec["gcs_address"] if rec else address, token_file, session_dir, cpus, num_gpus,
                               res, object_store_memory, node_ip=node_ip_address, tie_to_parent=False)
    _remember([d.proc.pid], session_dir)
    click.echo(f"skate node {d.info['node_id'][:12]} joined {address}")


@main.command()
@click.option("--force", is_flag=True, help="SIGKILL at once instead of stopping cleanly.")
def stop(force: bool) -> None:
    """Stops every daemon started with `skate start` on this machine."""
    import shutil

    import psutil

    from skate._private import node

    known = _known_daemons()
    procs = []
    for entry in known:
        try:
            p = psutil.Process(entry["pid"])
            if "skate._private" in " ".join(p.cmdline()):
                procs.append(p)
        except psutil.Error:
            pass
    # Node daemons first, so they leave the control store in order.
    procs.sort(key=lambda p: "._private.gcs." in " ".join(p.cmdline()))
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL if force else signal.SIGTERM)
        except psutil.Error:
            pass
    gone, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()
    node.sweep_dead_stores()  # what daemons killed with --force left in /dev/shm
    for entry in known:
        shutil.rmtree(entry["session_dir"], ignore_errors=True)
    for name in os.listdir(node.clusters_dir()):
        os.unlink(os.path.join(node.clusters_dir(), name))
    click.echo(f"stopped {len(procs)} skate processes")


@main.command()
@click.option("--address", default="auto", help="HOST:PORT of the head (default: the latest started here).")
def status(address: str) -> None:
    """Prints the cluster's nodes and resources."""
    import skate

    skate.init(address=address, log_to_driver=False)
    try:
        nodes = skate.nodes()
        total = skate.cluster_resources()
        free = skate.available_resources()
    finally:
        skate.shutdown()
    alive = [n for n in nodes if n["Alive"]]
    click.echo(f"{len(alive)} node(s) alive, {len(nodes) - len(alive)} dead")
    for n in nodes:
        state = "ALIVE" if n["Alive"] else "DEAD"
        head = " (head)" if n["IsHead"] else ""
        click.echo(f"  {n['NodeID'][:12]} {n['NodeManagerAddress']}:{n['NodeManagerPort']} {state}{head}")
    click.echo("resources (used / total):")
    for k in sorted(total):
        if k.startswith("node:"):
            continue
        used = total[k] - free.get(k, 0.0)
        if k in ("memory", "object_store_memory"):
            click.echo(f"  {k}: {used / 2**30:.2f} / {total[k] / 2**30:.2f} GiB")
        else:
            click.echo(f"  {k}: {used:g} / {total[k]:g}")


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False
)
@click.pass_context
def microbenchmark(ctx: click.Context) -> None:
    """Runs the microbenchmarks (add --compare ray to run Ray side by side)."""
    from skate._private import microbenchmark as mb

    sys.exit(mb.main(list(ctx.args)))


if __name__ == "__main__":
    main()
