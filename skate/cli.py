"""The ``skate`` command: one small function per subcommand, with Ray's flags.

Errors a user can act on (a busy port, no cluster, a bad address, a refused
token) print one line and exit with status 1, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

import skate

_HEAD_ONLY = "{flag} applies to a head (--head): the dashboard runs with the control store"


class _Group(click.Group):
    """Turns the errors a user can act on into one-line messages."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (ConnectionError, TimeoutError, ValueError, RuntimeError, OSError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.version_option(skate.__version__, "--version", prog_name="skate")
def main() -> None:
    """skate: a distributed execution framework with Ray's API."""


@main.command()
@click.option("--head", is_flag=True, help="Start the head node (control store + node daemon).")
@click.option("--address", default=None, help="Join the cluster whose head listens at HOST:PORT.")
@click.option("--node-ip-address", default=None,
              help="Address of this host that this node listens on and is reached at [default: a head: "
                   "127.0.0.1 (this machine only); a joining node: this host's address that routes to the head].")
@click.option("--port", type=int, default=None, help="Control-store port of a head [default: 6379; 0: any free port].")
@click.option("--node-manager-port", type=int, default=0, show_default=True,
              help="TCP port of this node's daemon (tasks, leases and object transfers); 0: any free port.")
@click.option("--object-manager-port", type=int, default=0, show_default=True,
              help="Only 0 is accepted: skate moves objects over the node daemon's port (--node-manager-port).")
@click.option("--min-worker-port", type=int, default=10002, show_default=True,
              help="Lowest TCP port workers listen on (0 with --max-worker-port 0: any free port).")
@click.option("--max-worker-port", type=int, default=19999, show_default=True,
              help="Highest TCP port workers listen on.")
@click.option("--num-cpus", type=float, default=None, help="CPUs of this node [default: all cores].")
@click.option("--num-gpus", type=float, default=0, help="GPUs of this node.")
@click.option("--resources", default="{}", help='Custom resources as JSON, e.g. \'{"disk": 2}\'.')
@click.option("--memory", type=int, default=None,
              help="Bytes of the node's `memory` resource for tasks and actors [default: 70% of RAM].")
@click.option("--object-store-memory", type=int, default=None,
              help="Shared-memory bytes for objects [default: 30% of RAM, capped by /dev/shm].")
@click.option("--labels", default="", help="Node labels, key1=value1,key2=value2 (shown by skate.nodes()).")
@click.option("--temp-dir", default=None, type=click.Path(file_okay=False),
              help="Root of this node's session and log folders [default: $SKATE_TEMP_DIR or /tmp/skate-<uid>].")
@click.option("--block", is_flag=True,
              help="Stay in the foreground: exit non-zero when a daemon dies; Ctrl-C or SIGTERM stops them.")
@click.option("--include-dashboard", type=click.BOOL, default=None,
              help="Start the dashboard with the head [default: when skate[dashboard] is installed].")
@click.option("--dashboard-host", default=None,
              help="Address the dashboard listens on [default: 127.0.0.1, this machine only].")
@click.option("--dashboard-port", type=int, default=None,
              help="Port of the dashboard [default: 8265, or any free port when 8265 is taken].")
@click.option("--storage", default=None,
              help="Where a head's control store keeps its tables: 'memory' (default; SKATE_GCS_STORAGE) "
                   "or redis://HOST:PORT (the control store then survives restarts).")
@click.option("--disable-usage-stats", is_flag=True,
              help="Accepted for Ray compatibility; skate collects no usage statistics at all.")
def start(head: bool, address: str | None, node_ip_address: str | None, port: int | None, node_manager_port: int,
          object_manager_port: int, min_worker_port: int, max_worker_port: int, num_cpus: float | None,
          num_gpus: float, resources: str, memory: int | None, object_store_memory: int | None, labels: str, temp_dir: str | None,
          block: bool, include_dashboard: bool | None, dashboard_host: str | None, dashboard_port: int | None,
          storage: str | None, disable_usage_stats: bool) -> None:
    """Starts this machine's daemons for a cluster that outlives drivers (`skate stop` stops them)."""
    from skate._private import cli_support as cs
    from skate._private import dashboard_launch, discovery, hostaddr, node, wire


    if head == bool(address):
        raise click.UsageError("give exactly one of --head or --address")
    if not head:
        for flag, value in (("--include-dashboard", include_dashboard), ("--dashboard-host", dashboard_host),
                            ("--dashboard-port", dashboard_port)):
            if value:
                raise click.UsageError(_HEAD_ONLY.format(flag=flag))
    listener = None
    if head and dashboard_launch.want(include_dashboard, "--include-dashboard=true"):
        listener = dashboard_launch.bind(dashboard_host, dashboard_port)  # a busy port fails before anything starts
    if node_ip_address in ("0.0.0.0", "::", ""):
        raise click.UsageError("--node-ip-address must be an address this node is reached at, not a wildcard")
    if storage is not None and not head:
        raise click.UsageError("--storage applies to a head (--head) only")
    worker_ports = cs.check_ports(node_manager_port, object_manager_port, min_worker_port, max_worker_port)
    if node_ip_address is None:
        node_ip_address = "127.0.0.1" if head or not address else hostaddr.route_ip(address.rpartition(":")[0])
    elif not hostaddr.is_local(node_ip_address):
        raise click.UsageError(f"--node-ip-address {node_ip_address} is not an address of this host")
    res = cs.parse_resources(resources)
    node_labels = cs.parse_labels(labels)
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    own_session = head
    if head:
        info = node.start_head(
            cpus, num_gpus, res, object_store_memory, host=node_ip_address, port=6379 if port is None else port,
            tie_to_parent=block, detach=True, discoverable=True, temp_dir=temp_dir, labels=node_labels,
            memory=memory, storage=storage, node_manager_port=node_manager_port, worker_ports=worker_ports,
        )
        procs = info["processes"]
        session_dir, gcs_address = info["session_dir"], info["gcs_address"]
        cs.remember([(procs[0].proc.pid, "gcs"), (procs[1].proc.pid, "raylet")], session_dir, gcs_address)
        dashboard_url = None
        if listener is not None:
            dash, where = dashboard_launch.start(info, listener, tie_to_parent=block, detach=True)
            procs.append(dash)
            cs.remember([(dash.proc.pid, "dashboard")], session_dir, gcs_address)
            dashboard_url = dashboard_launch.link(where, info["token"])
            dashboard_launch.announce(gcs_address, info["token"], where, session_dir)
        click.echo(f"skate head started at {gcs_address}")
        if dashboard_url:
            click.echo(f"  dashboard:          {dashboard_url}")
        click.echo(f"  logs:               {info['logs_dir']}")
        click.echo(f"  token file:         {info['token_file']}  (owner-only; never printed)")
        click.echo("  connect a driver:   skate.init()   (on this machine; or skate.init(address=\"" + gcs_address + "\"))")
        click.echo(f"  add a node here:    skate start --address {gcs_address}")
        if cs.is_loopback(node_ip_address):
            click.echo(f"  other hosts:        cannot join: the head listens on {node_ip_address} only; to let "
                       "them, start it with --node-ip-address <an address of this host they can reach>")
        else:
            click.echo(f"  from another host:  export SKATE_CLUSTER_TOKEN=<the contents of {info['token_file']}>")
            click.echo(f"                      skate start --address {gcs_address}")
        click.echo("  stop:               skate stop")
    else:
        if port is not None:
            raise click.UsageError("--port sets a head's control-store port; a joining node picks free ports itself")
        gcs_address = discovery.check_address(address)
        target = discovery.credentials(gcs_address)
        discovery.request(gcs_address, target.token, "get_nodes", expect=wire.GCS_IDENTITY)  # reachable, and the token is right
        own_session = target.session_dir is None or temp_dir is not None
        if not own_session:
            session_dir, token_file = target.session_dir, os.path.join(target.session_dir, "token")
        else:
            session_dir, _, token_file = node.new_session(temp_dir, token=target.token)
        d = node.start_worker_node(
            gcs_address, token_file, session_dir, cpus, num_gpus, res, object_store_memory,
            node_ip=node_ip_address, tie_to_parent=block, detach=True, labels=node_labels, memory=memory,
            node_manager_port=node_manager_port, worker_ports=worker_ports,
        )
        procs = [d]
        cs.remember([(d.proc.pid, "raylet")], session_dir, None)
        click.echo(f"skate node {d.info['node_id'][:12]} joined {gcs_address} (logs: {os.path.dirname(d.log_path)})")
    if not block:
        return
    cs.remember([(os.getpid(), "supervisor")], session_dir, gcs_address if head else None)
    click.echo("--block: supervising the daemons; Ctrl-C or SIGTERM stops them")
    code = cs.supervise(procs, cs.echo_err)
    cs.forget({os.getpid(), *(d.proc.pid for d in procs)})
    if head:
        node.forget_cluster(gcs_address)
    if head or own_session:
        node.remove_session(session_dir)
    sys.exit(code)


@main.command()
@click.option("-f", "--force", is_flag=True, help="SIGKILL at once instead of stopping cleanly.")
@click.option("-g", "--grace-period", type=float, default=16, show_default=True,
              help="Seconds to wait for a clean stop before SIGKILL.")
def stop(force: bool, grace_period: float) -> None:
    """Stops every daemon started with `skate start` on this machine (logs are kept)."""
    from skate._private import cli_support as cs

    n = cs.stop_started(force, grace_period)
    click.echo(f"stopped {n} skate processes")


@main.command()
@click.option("--address", default=None,
              help="HOST:PORT of the head [default: $SKATE_ADDRESS/$RAY_ADDRESS, else the latest started here].")
def status(address: str | None) -> None:
    """Prints the cluster's nodes, resources, pending and infeasible demands and placement groups."""
    from skate._private import cli_support as cs

    for line in cs.format_status(cs.cluster_status(address)):
        click.echo(line)


_ADDRESS = click.option("--address", default=None,
                        help="HOST:PORT of the head [default: $SKATE_ADDRESS/$RAY_ADDRESS, else the latest started here].")
_FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
                       show_default=True, help="Output format (yaml needs PyYAML).")


def _print_records(records: list, fmt: str) -> None:
    from skate._private import cli_support as cs

    rows = [r.asdict() if hasattr(r, "asdict") else r for r in records]
    for line in cs.format_records(rows, fmt):
        click.echo(line)


@main.command("list")
@click.argument("resource", type=click.Choice(["tasks", "actors", "nodes", "jobs", "objects", "workers",
                                                "placement-groups"]))
@_ADDRESS
@click.option("--filter", "filters", multiple=True, help='"key=value" or "key!=value" (repeatable).')
@click.option("--limit", type=int, default=100, show_default=True)
@_FORMAT
def list_(resource: str, address: str | None, filters: tuple, limit: int, fmt: str) -> None:
    """Lists the cluster's tasks, actors, nodes, jobs, objects, workers or placement groups (like `ray list`)."""
    from skate._private import cli_support as cs
    from skate.util import state

    fn = {"tasks": state.list_tasks, "actors": state.list_actors, "nodes": state.list_nodes, "jobs": state.list_jobs,
          "objects": state.list_objects, "workers": state.list_workers,
          "placement-groups": state.list_placement_groups}
    _print_records(fn[resource](address=cs.state_address(address), filters=cs.parse_filters(filters), limit=limit), fmt)


@main.command()
@click.argument("resource", type=click.Choice(["tasks", "actors", "objects"]))
@_ADDRESS
@_FORMAT
def summary(resource: str, address: str | None, fmt: str) -> None:
    """Counts tasks by function, actors by class (per state), or objects (like `ray summary`)."""
    from skate._private import cli_support as cs
    from skate.util import state

    if resource == "objects":
        s = state.summarize_objects(address=cs.state_address(address))["cluster"]
        _print_records([dict(call_site=k, **v) for k, v in s["summary"].items()], fmt)
        return
    fn = state.summarize_tasks if resource == "tasks" else state.summarize_actors
    rows = [dict(name=k, **{s: n for s, n in v["state_counts"].items()})
            for k, v in fn(address=cs.state_address(address))["cluster"]["summary"].items()]
    _print_records(rows, fmt)


@main.command()
@_ADDRESS
@click.option("--output", default=None, help="Where to write the trace [default: a file in the temp folder].")
def timeline(address: str | None, output: str | None) -> None:
    """Writes the tasks that ran as a Chrome trace (chrome://tracing, ui.perfetto.dev)."""
    import tempfile
    import time

    from skate._private import cli_support as cs

    output = output or os.path.join(tempfile.gettempdir(), f"skate-timeline-{time.strftime('%Y%m%d-%H%M%S')}.json")
    skate.init(address=cs.state_address(address) or "auto", log_to_driver=False)
    try:
        skate.timeline(output)
    finally:
        skate.shutdown()
    click.echo(f"Trace written to {output}: open it at chrome://tracing or https://ui.perfetto.dev")


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False
)
@click.pass_context
def microbenchmark(ctx: click.Context) -> None:
    """Runs the microbenchmarks (add --compare ray to run Ray side by side)."""
    from skate._private import microbenchmark as mb

    sys.exit(mb.main(list(ctx.args)))


main.add_command(importlib.import_module("skate._private.cli_job").job)
for _command in importlib.import_module("skate._private.cli_observe").COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
