"""``skate logs``, ``memory``, ``stack`` and ``get``: looking into a running cluster (like Ray's verbs).

Thin: each calls ``skate.util.state`` (or its private helpers) and prints.
"""

from __future__ import annotations

import sys
from typing import Any

import click

_ADDRESS = click.option(
    "--address", default=None,
    help="HOST:PORT of the head [default: $SKATE_ADDRESS/$RAY_ADDRESS, else the latest cluster started here].")


def _address(address: str | None) -> str:
    from skate._private import cli_support as cs

    return cs.state_address(address)


@click.command()
@click.argument("glob", required=False)
@_ADDRESS
@click.option("--node-id", default=None, help="The node whose logs to read [default: the head].")
@click.option("--node-ip", default=None, help="The node, by its address.")
@click.option("--actor-id", default=None, help="The output of the worker that runs this actor.")
@click.option("--task-id", default=None, help="The output of the worker that ran this task.")
@click.option("--pid", type=int, default=None, help="The output of the worker with this pid (on --node-id, else any node).")
@click.option("--submission-id", default=None, help="The output of a submitted job's entrypoint.")
@click.option("--err", is_flag=True, help="A worker's stderr instead of its stdout.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended (Ctrl-C ends).")
@click.option("--tail", type=int, default=1000, show_default=True, help="Print the last N lines (-1: all).")
def logs(glob: str | None, address: str | None, node_id: str | None, node_ip: str | None, actor_id: str | None,
         task_id: str | None, pid: int | None, submission_id: str | None, err: bool, follow: bool, tail: int) -> None:
    """Lists a node's log files, or prints one (like `ray logs`).

    With no GLOB and no process named, lists the files; a GLOB matching one
    file prints it, several lists them.
    """
    from skate.util import state

    addr = _address(address)
    suffix = "err" if err else "out"
    named = any(v is not None for v in (actor_id, task_id, pid, submission_id))
    filename = None
    if not named:
        files = state.list_logs(addr, node_id=node_id, node_ip=node_ip, glob_filter=glob or "*")
        names = sorted(n for group in files.values() for n in group)
        if glob is None or len(names) != 1:
            if glob is not None and not names:
                raise click.ClickException(f"no log file matches {glob!r} (run `skate logs` to list them)")
            for category in sorted(files):
                click.echo(f"{category}:")
                for n in sorted(files[category]):
                    click.echo(f"  {n}")
            return
        filename = names[0]
    if pid is not None and node_id is None and node_ip is None:
        node_id = _node_with(addr, f"worker-{pid}.{suffix}")
    try:
        for chunk in state.get_log(addr, node_id=node_id, node_ip=node_ip, filename=filename, actor_id=actor_id,
                                   task_id=task_id, pid=pid, submission_id=submission_id, suffix=suffix,
                                   follow=follow, tail=tail, errors="replace"):
            click.echo(chunk, nl=False)
            sys.stdout.flush()
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass


def _node_with(address: str, name: str) -> str:
    from skate.util import state

    for n in state.list_nodes(address, filters=[("state", "=", "ALIVE")], limit=None):
        if any(name in group for group in state.list_logs(address, node_id=n.node_id, glob_filter=name).values()):
            return n.node_id
    raise click.ClickException(f"no node has a log {name} (is the pid a worker's?)")


_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


@click.command()
@_ADDRESS
@click.option("--group-by", type=click.Choice(["NODE_ADDRESS", "STACK_TRACE"]), default="NODE_ADDRESS",
              show_default=True, help="Group references by node address, or by call site (all 'disabled').")
@click.option("--sort-by", type=click.Choice(["PID", "OBJECT_SIZE", "REFERENCE_TYPE"]), default="OBJECT_SIZE",
              show_default=True)
@click.option("--units", type=click.Choice(list(_UNITS)), default="B", show_default=True)
@click.option("--stats-only", is_flag=True, help="Only the totals.")
@click.option("--num-entries", type=int, default=None, help="At most this many references per group.")
def memory(address: str | None, group_by: str, sort_by: str, units: str, stats_only: bool,
           num_entries: int | None) -> None:
    """Object references held by every driver and worker: owner, size, reference type (like `ray memory`)."""
    from skate.util import state

    objs = state.list_objects(_address(address), limit=None)
    unit = _UNITS[units]
    owned = [o for o in objs if o.owned]
    click.echo(f"{len({o.object_id for o in objs})} object(s), {len(objs)} reference(s); "
               f"{sum(o.object_size for o in owned) / unit:.2f} {units} owned")
    if stats_only:
        return
    key = {"PID": lambda o: o.pid, "OBJECT_SIZE": lambda o: -o.object_size,
           "REFERENCE_TYPE": lambda o: o.reference_type}[sort_by]
    groups: dict[str, list] = {}
    for o in objs:
        groups.setdefault(o.ip if group_by == "NODE_ADDRESS" else o.call_site, []).append(o)
    for name in sorted(groups):
        rows = sorted(groups[name], key=key)[:num_entries]
        click.echo(f"--- {'node ' if group_by == 'NODE_ADDRESS' else 'call site '}{name} ---")
        head = f"{'PID':>8}  {'TYPE':6}  {'STATUS':8}  {'SIZE':>12}  {'REFERENCE_TYPE':20}  {'OWNED':5}  OBJECT_ID"
        click.echo(head)
        for o in rows:
            size = f"{o.object_size / unit:.2f} {units}" if o.owned else "?"
            click.echo(f"{o.pid:>8}  {o.type:6}  {o.task_status:8}  {size:>12}  {o.reference_type:20}  "
                       f"{'yes' if o.owned else 'no':5}  {o.object_id}")


@click.command()
@_ADDRESS
@click.option("--node-id", default=None, help="That node's workers [default: every driver and worker on this machine].")
def stack(address: str | None, node_id: str | None) -> None:
    """Prints the Python stack of every thread of every driver and worker on this machine (like `ray stack`)."""
    from skate._private import state_workers

    found = state_workers.stacks(_address(address), node_id=node_id)
    if not found:
        click.echo("no skate workers or drivers on this machine")
    for proc, text in found:
        what = f"actor {proc.actor_id}" if proc.actor_id else "leased" if proc.leased else (
            "idle" if proc.worker_type == "WORKER" else f"job {proc.job_id}")
        click.echo(f"=== {proc.worker_type.lower()} pid={proc.pid} ({what}) on {proc.ip} ===")
        click.echo(text.rstrip("\n"))
        click.echo("")


_GETTERS = ("tasks", "actors", "nodes", "jobs", "workers", "objects")


@click.command()
@click.argument("resource", type=click.Choice(_GETTERS))
@click.argument("id")
@_ADDRESS
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default=None,
              help="Output format [default: yaml when PyYAML is installed, else json].")
def get(resource: str, id: str, address: str | None, fmt: str | None) -> None:
    """Prints one task, actor, node, job, worker, or an object's references, by id (like `ray get`)."""
    from skate._private import cli_support as cs
    from skate.util import state

    fn: dict[str, Any] = {"tasks": state.get_task, "actors": state.get_actor, "nodes": state.get_node,
                          "jobs": state.get_job, "workers": state.get_worker, "objects": state.get_objects}
    found = fn[resource](id, address=_address(address))
    if not found:
        raise click.ClickException(f"no {resource[:-1]} with id {id} (see `skate list {resource}`)")
    if fmt is None:
        try:
            import yaml  # noqa: F401

            fmt = "yaml"
        except ImportError:
            fmt = "json"
    records = found if isinstance(found, list) else [found]
    rows = [r.asdict() for r in records]
    for line in cs.format_records(rows if isinstance(found, list) else rows[0], fmt):  # type: ignore[arg-type]
        click.echo(line)


COMMANDS = (logs, memory, stack, get)
