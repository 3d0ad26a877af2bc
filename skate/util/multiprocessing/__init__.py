"""``multiprocessing.Pool`` on skate actors (follows Ray's ``ray.util.multiprocessing``)."""

from multiprocessing import JoinableQueue, TimeoutError

from skate.util.multiprocessing.pool import Pool
from skate.util.multiprocessing.results import AsyncResult, IMapIterator

__all__ = ["AsyncResult", "IMapIterator", "JoinableQueue", "Pool", "TimeoutError"]
