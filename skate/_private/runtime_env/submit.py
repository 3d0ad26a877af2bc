"""The submitting side of runtime environments: the job's, and a task's or actor's.

A process has a *base* environment (``core.runtime_env``): a driver's is the
job's (``init(runtime_env=...)``), a worker's is the one it was started
with, so nested tasks inherit it, like Ray.  ``for_submit`` merges a task's
or actor's own ``runtime_env`` over the base and resolves it (uploading
local folders once per process and distinct environment); the result goes
in the lease request, and node daemons start workers with it.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from skate._private.runtime_env import packaging, spec
from skate._private.runtime_env.node import kv_value

_lock = threading.Lock()
#: core -> {(base hash, canonical JSON of the task's env): resolved env}
_resolved: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class GcsKV:
    """The control store's key-value table as a ``packaging.KVStore`` (blocking; user threads)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def get(self, key: str) -> bytes | None:
        return kv_value(self.core.gcs_call("kv_get", [packaging.KV_NAMESPACE, key]))

    def put(self, key: str, value: bytes, overwrite: bool) -> bool:
        return self.core.gcs_call("kv_put", [packaging.KV_NAMESPACE, key, overwrite], [value])

    def exists(self, key: str) -> bool:
        return bool(self.core.gcs_call("kv_keys", [packaging.KV_NAMESPACE, key]))


def set_job_env(core: Any, runtime_env: Any) -> None:
    """Validates, uploads and installs ``init(runtime_env=...)`` as the job's environment.

    Raises:
        TypeError, ValueError, NotImplementedError: as ``spec.validate``.
        RuntimeEnvSetupError: a local path could not be packed.
    """
    env = spec.validate(runtime_env)
    core.runtime_env = spec.resolve(env, GcsKV(core)) if env else {}


def for_submit(core: Any, runtime_env: Any) -> dict | None:
    """The resolved environment a task or actor runs in (None: the default one).

    ``runtime_env`` is the task's or actor's own (already checked by
    ``spec.validate`` when the options were given).
    """
    base = core.runtime_env
    if not runtime_env:
        return base or None
    key = (spec.env_hash(base), json.dumps(runtime_env, sort_keys=True, default=str))
    with _lock:
        per_core = _resolved.get(core)
        if per_core is None:
            per_core = _resolved[core] = {}
        found = per_core.get(key)
    if found is not None:
        return found
    own = spec.resolve(spec.validate(runtime_env), GcsKV(core))
    merged = spec.merge(base, own)
    with _lock:
        per_core[key] = merged
    return merged or None


def worker_env_of(environ: dict) -> dict:
    """The environment a worker process was started with (``SKATE_RUNTIME_ENV``)."""
    raw = environ.get("SKATE_RUNTIME_ENV")
    return json.loads(raw) if raw else {}
