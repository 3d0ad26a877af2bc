"""What a freshly forked worker does with its runtime environment, before any user code.

Runs in the zygote's child right after the fork (see ``raylet/zygote.py``):
the environment variables are set (``${NAME}`` in a value expands to the
variable's value already there, like Ray), the working directory becomes
the unpacked ``working_dir``, and it and the ``py_modules`` packages go first
on ``sys.path`` and ``PYTHONPATH`` (so subprocesses see them too).
"""

from __future__ import annotations

import os
import re
import sys

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str, environ: dict) -> str:
    """``value`` with each ``${NAME}`` replaced by ``environ[NAME]`` ("" when unset)."""
    return _REF.sub(lambda m: environ.get(m.group(1), ""), value)


def apply(setup: dict) -> None:
    """Applies a node's setup (``NodeEnvs.prepare``) to this process."""
    env_vars = setup.get("env_vars") or {}
    for k, v in env_vars.items():
        os.environ[k] = expand(v, os.environ)
    paths = setup.get("sys_path") or []
    if paths:
        sys.path[:0] = paths
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    if setup.get("cwd"):
        os.chdir(setup["cwd"])
    os.environ["SKATE_RUNTIME_ENV"] = setup.get("json", "{}")
