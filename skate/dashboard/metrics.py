"""Prometheus metrics of the cluster, under Ray's metric names.

The names and labels are Ray's (``ray_tasks``, ``ray_actors``,
``ray_resources``, ``ray_object_store_memory``, ``ray_node_*``,
``ray_cluster_active_nodes``), so Grafana dashboards and alerts written for
Ray read a skate cluster unchanged; every series also has ``SessionName``.
Values come from the dashboard's latest snapshot (``collect.py``), taken
when Prometheus scrapes.  Task counts cover the tasks the control store
still records (the last ``SKATE_TASK_EVENTS_MAX``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from skate.dashboard.collect import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ClusterMetrics:
    """A prometheus_client collector over the snapshot ``get_snapshot()`` returns."""

    def __init__(self, session: str, get_snapshot: Callable[[], Snapshot]) -> None:
        self.session = session
        self.get_snapshot = get_snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.get_snapshot()
        s = self.session
        tasks = GaugeMetricFamily("ray_tasks", "Current number of tasks (remote functions and actor calls) by state.",
                                  labels=["Name", "State", "IsRetry", "SessionName"])
        for (name, st), count in sorted(snap.task_counts.items()):
            tasks.add_metric([name, st, "0", s], count)
        yield tasks
        actors = GaugeMetricFamily("ray_actors", "Current number of actors in a particular state.",
                                   labels=["Name", "State", "SessionName"])
        by: dict = {}
        for a in snap.actors:
            key = (a["class_name"], a["state"])
            by[key] = by.get(key, 0) + 1
        for (name, st), count in sorted(by.items()):
            actors.add_metric([name, st, s], count)
        yield actors
        yield from self._nodes(snap)

    def _nodes(self, snap: Snapshot) -> Iterator[GaugeMetricFamily]:
        s = self.session
        node_labels = ["InstanceId", "NodeId", "SessionName"]
        resources = GaugeMetricFamily("ray_resources", "Logical resource usage for each node of the cluster.",
                                      labels=["Name", "State", *node_labels])
        store = GaugeMetricFamily("ray_object_store_memory", "Object store memory usage in bytes.",
                                  labels=["Location", "ObjectState", *node_labels])
        cpu = GaugeMetricFamily("ray_node_cpu_utilization", "Total CPU usage on a node's host (percent).",
                                labels=node_labels)
        cpus = GaugeMetricFamily("ray_node_cpu_count", "Total CPUs of a node's host.", labels=node_labels)
        mem_used = GaugeMetricFamily("ray_node_mem_used", "Memory used on a node's host (bytes).", labels=node_labels)
        mem_total = GaugeMetricFamily("ray_node_mem_total", "Total memory of a node's host (bytes).",
                                      labels=node_labels)
        active = GaugeMetricFamily("ray_cluster_active_nodes", "Active nodes of the cluster.",
                                   labels=["node_type", "SessionName"])
        alive = {"head": 0, "worker": 0}
        for n in snap.nodes:
            if n["state"] != "ALIVE":
                continue
            alive["head" if n["is_head"] else "worker"] += 1
            where = [n["ip"], n["node_id"], s]
            avail = n["resources_available"]
            for name, total in sorted(n["resources_total"].items()):
                free = avail.get(name, 0.0)
                resources.add_metric([name, "USED", *where], max(total - free, 0.0))
                resources.add_metric([name, "AVAILABLE", *where], free)
            st = n.get("stats")
            if not st:
                continue
            store.add_metric(["MMAP_SHM", "SEALED", *where], st["store_used"])
            if st.get("cpu_percent") is not None:
                cpu.add_metric(where, st["cpu_percent"])
                cpus.add_metric(where, st["cpu_count"])
                mem_used.add_metric(where, st["mem_used"])
                mem_total.add_metric(where, st["mem_total"])
        for kind, count in alive.items():
            active.add_metric([kind, s], count)
        yield from (resources, store, cpu, cpus, mem_used, mem_total, active)


def registry(session: str, get_snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry holding only the cluster's metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ClusterMetrics(session, get_snapshot))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(reg)
