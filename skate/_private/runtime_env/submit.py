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
import os
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


#: Set for a submitted job's entrypoint: the job's runtime_env (JSON, packages as URIs).
SUBMITTED_ENV_VAR = "SKATE_JOB_RUNTIME_ENV"


def set_job_env(core: Any, runtime_env: Any, environ: dict | None = None) -> None:
    """Validates, uploads and installs ``init(runtime_env=...)`` as the job's environment,
    combined with the runtime_env the job was submitted with, if any (see ``combine``).

    Raises:
        TypeError, ValueError, NotImplementedError: as ``spec.validate``; ValueError
            when ``init``'s and the submitted job's environments conflict.
        RuntimeEnvSetupError: a local path could not be packed.
    """
    env = spec.validate(runtime_env)
    resolved = spec.resolve(env, GcsKV(core)) if env else {}
    raw = (environ if environ is not None else os.environ).get(SUBMITTED_ENV_VAR)
    if raw:
        resolved = combine(json.loads(raw), resolved, environ if environ is not None else os.environ)
    core.runtime_env = resolved


def combine(submitted: dict, own: dict, environ: dict) -> dict:
    """A submitted job's runtime_env with its driver's ``init(runtime_env=...)`` (follows
    Ray): merged; a field (or environment variable) set differently in both is an error,
    unless ``RAY_OVERRIDE_JOB_RUNTIME_ENV=1`` (or ``SKATE_...``), when the driver's wins.

    Raises:
        ValueError: a conflict, without the override.
    """
    override = "1" in (environ.get("RAY_OVERRIDE_JOB_RUNTIME_ENV"), environ.get("SKATE_OVERRIDE_JOB_RUNTIME_ENV"))
    if not override:
        clash = [k for k in own if k != "env_vars" and k in submitted and submitted[k] != own[k]]
        a, b = submitted.get("env_vars") or {}, own.get("env_vars") or {}
        clash += [f"env_vars[{k!r}]" for k in b if k in a and a[k] != b[k]]
        if clash:
            raise ValueError(
                f"the runtime_env given to init() conflicts with the job's (submitted) runtime_env on "
                f"{', '.join(clash)}; set RAY_OVERRIDE_JOB_RUNTIME_ENV=1 to let init()'s win"
            )
    return spec.merge(submitted, own)


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
