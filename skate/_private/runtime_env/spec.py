"""The ``runtime_env`` dictionary: checking, merging, resolving, hashing.

What a user passes (to ``init``, ``@remote`` or ``.options``)::

    {"env_vars": {"K": "v"}, "working_dir": "./proj", "py_modules": ["./lib", mod],
     "excludes": ["*.log"], "config": {"setup_timeout_seconds": 60}}

``validate`` checks it like Ray (names, types) and refuses, naming what is
supported, the fields skate does not implement (``pip``, ``conda``, ...).
``merge`` combines a parent's environment (the job's, or the submitting
task's) with a task's or actor's own, like Ray: the child's fields replace
the parent's, except ``env_vars``, merged key by key with the child winning.
``resolve`` packs and uploads the local paths (see ``packaging``) and returns
the *resolved* form that travels to the node daemons, where paths are
package URIs; ``env_hash`` names a resolved environment (workers are pooled
by it).
"""

from __future__ import annotations

import hashlib
import json
import os
import types
from typing import Any

from skate._private.runtime_env import packaging

#: The fields skate implements.
SUPPORTED = ("env_vars", "working_dir", "py_modules", "excludes", "config")
#: The fields of Ray's runtime_env skate knows and refuses, with why.
UNSUPPORTED = {
    "pip": "installing packages per task is not implemented",
    "uv": "installing packages per task is not implemented",
    "conda": "conda environments are not implemented",
    "container": "containers are not implemented",
    "image_uri": "container images are not implemented",
    "py_executable": "other Python executables are not implemented",
    "java_jars": "skate runs Python only",
    "nsight": "profiler plugins are not implemented",
    "rocprof_sys": "profiler plugins are not implemented",
    "mpi": "MPI plugins are not implemented",
    "worker_process_setup_hook": "worker setup hooks are not implemented",
}
#: Keys of ``config`` skate takes.  ``eager_install`` (a bool) only says when
#: packages are fetched: they are uploaded when the environment is first used
#: by the driver, and a node fetches them when it first starts a worker for it.
CONFIG_KEYS = ("setup_timeout_seconds", "eager_install")
#: Ray's default ``setup_timeout_seconds``.
DEFAULT_SETUP_TIMEOUT_S = 600


def _unsupported(what: str, why: str) -> NotImplementedError:
    return NotImplementedError(
        f"skate does not support runtime_env {what}: {why}. Supported fields: {', '.join(SUPPORTED)} "
        f"(config keys: {', '.join(CONFIG_KEYS)})."
    )


def _is_remote_uri(value: str) -> bool:
    return "://" in value


def _check_path_field(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"runtime_env['{name}'] must be a str (a local path or a URI), not {type(value).__name__}")
    if _is_remote_uri(value) and not packaging.is_package_uri(value):
        raise _unsupported(f"{name}={value!r}", "only local paths (folders or .zip files) are supported, not remote URIs")
    if not _is_remote_uri(value):
        path = os.path.abspath(os.path.expanduser(value))
        if not os.path.exists(path):
            raise ValueError(f"runtime_env['{name}'] {value!r} does not exist")
        if os.path.isfile(path) and name == "working_dir" and not path.endswith(".zip"):
            raise ValueError(f"runtime_env['working_dir'] must be a folder or a .zip file, not {value!r}")


def validate(runtime_env: Any) -> dict:
    """Checks a user's ``runtime_env`` (a dict, or a ``RuntimeEnv``); returns a plain copy.

    Raises:
        TypeError: a field of the wrong type (``env_vars`` not ``Dict[str, str]``, ...).
        ValueError: an unknown field or config key, or a local path that does not exist.
        NotImplementedError: a field skate does not implement (``pip``, ``conda``,
            ``container``, remote URIs, ...), naming what is supported.
    """
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, not {type(runtime_env).__name__}")
    out = {}
    for key, value in runtime_env.items():
        if key in UNSUPPORTED:
            if value in (None, {}, [], ""):
                continue
            raise _unsupported(f"field {key!r}", UNSUPPORTED[key])
        if key not in SUPPORTED:
            raise ValueError(
                f"unknown runtime_env field {key!r}; skate supports {', '.join(SUPPORTED)}"
            )
        if value is None:
            continue
        out[key] = value
    env_vars = out.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise TypeError("runtime_env['env_vars'] must be of type Dict[str, str]")
        out["env_vars"] = dict(env_vars)
    if "working_dir" in out:
        _check_path_field("working_dir", out["working_dir"])
    if "py_modules" in out:
        mods = out["py_modules"]
        if not isinstance(mods, (list, tuple)):
            raise TypeError("runtime_env['py_modules'] must be a list of local paths, URIs or modules")
        checked = []
        for m in mods:
            if isinstance(m, types.ModuleType):
                m = _module_path(m)
            elif isinstance(m, str) and m.endswith(".whl"):
                raise _unsupported(f"py_modules entry {m!r}", "wheels need pip, which is not implemented")
            _check_path_field("py_modules", m)
            checked.append(m)
        out["py_modules"] = checked
    excludes = out.get("excludes")
    if excludes is not None:
        if not isinstance(excludes, (list, tuple)) or not all(isinstance(p, str) for p in excludes):
            raise TypeError("runtime_env['excludes'] must be a list of str")
        out["excludes"] = list(excludes)
    config = out.get("config")
    if config is not None:
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        if not isinstance(config, dict):
            raise TypeError("runtime_env['config'] must be a dict or a RuntimeEnvConfig")
        for k, v in config.items():
            if k == "eager_install" and not isinstance(v, bool):
                raise TypeError("eager_install must be a bool")
            if k not in CONFIG_KEYS:
                raise ValueError(f"unknown runtime_env config key {k!r}; skate supports {', '.join(CONFIG_KEYS)}")
            if k == "setup_timeout_seconds" and (not isinstance(v, int) or isinstance(v, bool) or (v <= 0 and v != -1)):
                raise ValueError("setup_timeout_seconds must be a positive int, or -1 for no timeout")
        out["config"] = dict(config)
    return out


def _module_path(mod: types.ModuleType) -> str:
    """The local path of an imported module: its package folder, or its file."""
    paths = getattr(mod, "__path__", None)
    if paths:
        return list(paths)[0]
    f = getattr(mod, "__file__", None)
    if not f:
        raise ValueError(f"py_modules: module {mod.__name__} has no file to ship")
    return f


def merge(parent: dict | None, child: dict | None) -> dict:
    """``child`` over ``parent`` (follows Ray): fields replaced, ``env_vars`` merged key by key."""
    if not parent:
        return dict(child or {})
    if not child:
        return dict(parent)
    out = dict(parent)
    for k, v in child.items():
        if k == "env_vars" and isinstance(out.get("env_vars"), dict):
            out["env_vars"] = {**out["env_vars"], **v}
        else:
            out[k] = v
    return out


def resolve(env: dict, kv: packaging.KVStore) -> dict:
    """Uploads the local paths of a validated environment; returns it with package URIs.

    ``working_dir`` becomes one URI; each ``py_modules`` entry becomes one
    (a folder is packed with its own name at the top, so it imports by that
    name); ``excludes`` is applied while packing and dropped.

    Raises:
        RuntimeEnvSetupError: a path cannot be packed (too big, unreadable).
    """
    from skate.exceptions import RuntimeEnvSetupError

    out = dict(env)
    excludes = out.pop("excludes", None) or []
    try:
        wd = out.get("working_dir")
        if wd is not None and not packaging.is_package_uri(wd):
            out["working_dir"] = packaging.upload_path(kv, wd, excludes)
        mods = out.get("py_modules")
        if mods:
            uris = []
            for m in mods:
                if packaging.is_package_uri(m):
                    uris.append(m)
                else:
                    uris.append(packaging.upload_path(kv, m, excludes, include_parent_dir=os.path.isdir(m)))
            out["py_modules"] = uris
    except packaging.PackagingError as e:
        raise RuntimeEnvSetupError(f"could not package the runtime_env: {e}") from e
    return out


def env_hash(resolved: dict | None) -> str | None:
    """A short name of a resolved environment (None for the empty one); like Ray,
    ``config`` is left out, so environments differing only there share workers."""
    if not resolved:
        return None
    if "config" in resolved:
        resolved = {k: v for k, v in resolved.items() if k != "config"}
        if not resolved:
            return None
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def setup_timeout(resolved: dict) -> float | None:
    """Seconds a node may spend preparing the environment (None: no limit)."""
    t = (resolved.get("config") or {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S)
    return None if t == -1 else float(t)
