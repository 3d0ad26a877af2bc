"""A joblib backend that runs ``joblib.Parallel`` on skate (follows Ray's ``ray.util.joblib``).

Usage::

    import joblib
    from skate.util.joblib import register_ray

    register_ray()
    with joblib.parallel_backend("ray"):   # or "skate"
        joblib.Parallel(n_jobs=-1)(joblib.delayed(f)(i) for i in range(100))

joblib is an optional dependency (``pip install 'skate[joblib]'``).
"""

from __future__ import annotations


def register_ray() -> None:
    """Registers the skate backend with joblib under the names ``"ray"`` and ``"skate"``.

    Raises:
        ImportError: if joblib is not installed.
    """
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError:
        raise ImportError(
            "the joblib backend needs joblib: pip install joblib (or pip install 'skate[joblib]')"
        ) from None
    from skate.util.joblib.backend import SkateBackend

    register_parallel_backend("ray", SkateBackend)
    register_parallel_backend("skate", SkateBackend)


__all__ = ["register_ray"]
