"""What a running cluster does and did (follows Ray 2.60's ``ray.util.state``).

Tasks come from the task events workers report (the most recent
``SKATE_TASK_EVENTS_MAX``, default 10,000); actors, nodes and jobs from the
control store, and so do placement groups.  Objects and workers are not listed yet.
"""

from skate._private.state_api import (
    ActorState,
    JobState,
    NodeState,
    PlacementGroupState,
    TaskState,
    get_actor,
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

__all__ = [
    "ActorState",
    "JobState",
    "NodeState",
    "PlacementGroupState",
    "TaskState",
    "get_actor",
    "get_node",
    "get_placement_group",
    "get_task",
    "list_actors",
    "list_jobs",
    "list_nodes",
    "list_placement_groups",
    "list_tasks",
    "summarize_actors",
    "summarize_tasks",
]
