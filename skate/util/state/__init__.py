"""What a running cluster does and did (follows Ray 2.60's ``ray.util.state``).

Tasks come from the task events workers report (the most recent
``SKATE_TASK_EVENTS_MAX``, default 10,000); actors, nodes and jobs from the
control store, and so are placement groups; workers from the node daemons;
objects from every core worker's own table; logs from each node's log folder.
"""

from skate._private.state_api import (
    ActorState,
    JobState,
    NodeState,
    PlacementGroupState,
    TaskState,
    get_actor,
    get_job,
    get_node,
    get_placement_group,
    get_task,
    list_actors,
    list_jobs,
    list_nodes,
    list_placement_groups,
    list_tasks,
    summarize_actors,
    summarize_tasks,
)
from skate._private.state_logs import get_log, list_logs
from skate._private.state_workers import (
    ObjectState,
    WorkerState,
    get_objects,
    get_worker,
    list_objects,
    list_workers,
    summarize_objects,
)

__all__ = [
    "ActorState",
    "JobState",
    "NodeState",
    "PlacementGroupState",
    "ObjectState",
    "TaskState",
    "WorkerState",
    "get_actor",
    "get_job",
    "get_log",
    "get_node",
    "get_placement_group",
    "get_objects",
    "get_task",
    "get_worker",
    "list_actors",
    "list_jobs",
    "list_logs",
    "list_nodes",
    "list_placement_groups",
    "list_objects",
    "list_tasks",
    "list_workers",
    "summarize_actors",
    "summarize_objects",
    "summarize_tasks",
]
