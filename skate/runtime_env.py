"""``RuntimeEnv`` and ``RuntimeEnvConfig`` (follows Ray's ``ray.runtime_env``).

Both are dicts, usable wherever a ``runtime_env`` dict is: ``init``,
``@remote`` and ``.options``.  skate implements ``env_vars``,
``working_dir``, ``py_modules``, ``excludes`` and ``config``; the other
fields raise ``NotImplementedError`` naming what is supported.
"""

from __future__ import annotations

import json
from typing import Any

from skate._private.runtime_env import spec

__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]

class RuntimeEnvConfig(dict):
    """Options of setting an environment up (follows Ray's ``RuntimeEnvConfig``).

    Args:
        setup_timeout_seconds: Seconds a node may take to fetch and unpack
            the environment's packages before the task or actor fails with
            ``RuntimeEnvSetupError`` (default 600; -1: no limit).
        eager_install: When packages reach nodes: either way skate uploads them
            when the driver first uses the environment and a node fetches them
            when it first starts a worker for it.
        log_files: Not supported (raises NotImplementedError).

    Raises:
        TypeError, ValueError, NotImplementedError: for values skate does not accept.
    """

    def __init__(self, setup_timeout_seconds: int = 600, eager_install: bool = True, log_files: list | None = None) -> None:
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)
        if log_files:
            raise NotImplementedError("skate does not support RuntimeEnvConfig(log_files=...): setup logs are not collected.")
        spec.validate({"config": dict(self)})

    def to_dict(self) -> dict:
        """A plain dict of the options."""
        return dict(self)


class RuntimeEnv(dict):
    """A runtime environment (follows Ray's ``RuntimeEnv``): a dict of its fields.

    ``RuntimeEnv(env_vars={"A": "1"}, working_dir="./proj")`` is the dict
    ``{"env_vars": {"A": "1"}, "working_dir": "./proj"}``, checked at
    construction.

    Raises:
        TypeError, ValueError: a field of the wrong type or an unknown field.
        NotImplementedError: a field skate does not implement (``pip``,
            ``conda``, ``container``, ...).
    """

    def __init__(
        self,
        *,
        py_modules: list | None = None,
        py_executable: str | None = None,
        working_dir: str | None = None,
        pip: Any = None,
        conda: Any = None,
        container: dict | None = None,
        env_vars: dict | None = None,
        worker_process_setup_hook: Any = None,
        nsight: Any = None,
        rocprof_sys: Any = None,
        config: dict | RuntimeEnvConfig | None = None,
        _validate: bool = True,
        image_uri: str | None = None,
        uv: Any = None,
        **kwargs: Any,
    ) -> None:
        fields = dict(
            py_modules=py_modules, py_executable=py_executable, working_dir=working_dir, pip=pip,
            conda=conda, container=container, env_vars=env_vars,
            worker_process_setup_hook=worker_process_setup_hook, nsight=nsight, rocprof_sys=rocprof_sys,
            config=config, image_uri=image_uri, uv=uv, **kwargs,
        )
        super().__init__({k: v for k, v in fields.items() if v is not None})
        if _validate:
            spec.validate(dict(self))

    def to_dict(self) -> dict:
        """A plain dict of the fields."""
        return dict(self)

    def serialize(self) -> str:
        """The environment as JSON."""
        return json.dumps(self, sort_keys=True, default=str)

    @classmethod
    def deserialize(cls, serialized: str) -> RuntimeEnv:
        """The environment from ``serialize``'s JSON."""
        return cls(_validate=False, **json.loads(serialized))

    def env_vars(self) -> dict:
        """The environment variables set (``{}`` if none)."""
        return dict(self.get("env_vars") or {})

    def working_dir_uri(self) -> str | None:
        """The ``working_dir`` (a package URI once resolved), or None."""
        return self.get("working_dir")

    def py_modules_uris(self) -> list:
        """The ``py_modules`` entries (package URIs once resolved)."""
        return list(self.get("py_modules") or [])

    def has_py_container(self) -> bool:
        """False: containers are not implemented."""
        return False
