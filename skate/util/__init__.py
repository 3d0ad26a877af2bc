"""Utilities on top of the core API (``ray.util``'s names).

``skate.util.queue``, ``skate.util.multiprocessing`` and ``skate.util.joblib``
are submodules to import on their own, as in Ray.
"""

from skate.util.actor_pool import ActorPool
from skate.util.check_serialize import inspect_serializability
from skate.util.cluster_info import get_node_ip_address, list_named_actors
from skate.util.helpers import as_completed, map_unordered
from skate.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = [
    "ActorPool",
    "NodeAffinitySchedulingStrategy",
    "as_completed",
    "get_node_ip_address",
    "inspect_serializability",
    "list_named_actors",
    "map_unordered",
]
