"""``SkateBackend``: joblib's multiprocessing backend with a skate ``Pool`` (follows Ray).

joblib batches the calls of a ``Parallel`` loop and hands each batch to
``Pool.apply_async``; the pool's actors (anywhere in the cluster) run them
and the result callback tells joblib to dispatch more.  Large arguments
travel through skate's object store, so joblib's local memory-mapping
options (``max_nbytes``, ``mmap_mode``, ``temp_folder``) and its
multiprocessing ``context`` do not apply; any other unknown option is an
error.
"""

from __future__ import annotations

from typing import Any

from joblib.parallel import FallbackToBackend, MultiprocessingBackend, SequentialBackend

from skate._private import api
from skate.util.multiprocessing import Pool

# Options joblib's Parallel passes to every backend; they configure local
# process pools (memory-mapped arrays, start method, logging) and have no
# counterpart for actors.
_JOBLIB_LOCAL_OPTIONS = frozenset({"context", "max_nbytes", "mmap_mode", "temp_folder", "verbose"})


class SkateBackend(MultiprocessingBackend):
    """Runs joblib batches on a skate ``Pool`` of actors.

    Args:
        nesting_level: joblib's nesting level (set by joblib).
        inner_max_num_threads: joblib's thread limit for nested code (set by joblib).
        ray_remote_args: Options of the pool's actors (e.g. ``{"num_cpus": 2}``).

    Raises:
        TypeError: for an option the backend does not know.
    """

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 ray_remote_args: dict | None = None, **kwargs: Any) -> None:
        _check_options(kwargs)
        self.ray_remote_args = ray_remote_args
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Workers a ``Parallel(n_jobs=...)`` gets: negative counts from the cluster's CPUs.

        ``-1`` means every CPU of the cluster (connecting, or starting a
        local cluster, if this process is not connected yet).

        Raises:
            ValueError: for ``n_jobs == 0``.
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            cpus = int(api.cluster_resources().get("CPU", 0))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, ray_remote_args: dict | None = None, **kwargs: Any) -> int:
        """Starts the pool for a ``Parallel`` call; returns its number of workers.

        Raises:
            TypeError: for an option the backend does not know.
            ValueError: if more workers are asked for than the cluster has CPUs.
        """
        _check_options(kwargs)
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._pool = Pool(n_jobs, ray_remote_args=ray_remote_args or self.ray_remote_args)
        self.parallel = parallel
        return n_jobs


def _check_options(options: dict) -> None:
    unknown = set(options) - _JOBLIB_LOCAL_OPTIONS
    if unknown:
        raise TypeError(f"the skate joblib backend does not support the options {sorted(unknown)}")


__all__ = ["SkateBackend"]
