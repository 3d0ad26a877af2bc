"""Utilities on top of the core API (``ray.util``'s names).

``skate.util.queue``, ``skate.util.multiprocessing`` and ``skate.util.joblib``
are submodules to import on their own, as in Ray.
"""

from skate.util.actor_pool import ActorPool
from skate.util.check_serialize import inspect_serializability
from skate.util.cluster_info import get_node_ip_address, list_named_actors
from skate.util.helpers import as_completed, map_unordered
from skate.util.placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from skate.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "ActorPool",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
    "as_completed",
    "get_current_placement_group",
    "get_node_ip_address",
    "get_placement_group",
    "inspect_serializability",
    "list_named_actors",
    "map_unordered",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]
