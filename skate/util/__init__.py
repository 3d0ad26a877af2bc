"""Utilities on top of the core API (follow Ray's ``ray.util``)."""

from skate.util.actor_pool import ActorPool
from skate.util.helpers import as_completed, get_node_ip_address, list_named_actors, map_unordered
from skate.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = [
    "ActorPool",
    "NodeAffinitySchedulingStrategy",
    "as_completed",
    "get_node_ip_address",
    "list_named_actors",
    "map_unordered",
]
