"""Utilities on top of the core API (follow Ray's ``ray.util``)."""

from skate.util.helpers import as_completed, map_unordered
from skate.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy", "as_completed", "map_unordered"]
