"""Process titles, so ``ps`` tells skate's processes apart (like Ray's ``ray::...``).

Every process of a cluster sets its title once it knows what it is:
``skate::gcs``, ``skate::raylet``, ``skate::zygote``; a worker is
``skate::IDLE`` until it runs something, ``skate::<task name>`` while a task
runs, ``skate::<ActorClass>`` once it hosts an actor and
``skate::<ActorClass>.<method>`` while a call of that actor runs.  Actors
that run several calls at once (async actors, ``max_concurrency > 1``) keep
``skate::<ActorClass>``: no single call is "the" one running.

Setting a title costs well under a microsecond (it rewrites the process's
argv area), so the executor sets it around every task.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

PREFIX = "skate::"

try:
    from setproctitle import setproctitle as _set
except ImportError:  # a declared dependency; tolerated only so a bare checkout still runs
    _set = None

#: The daemon module run as ``__main__`` -> the title it takes.
_DAEMONS = {
    "skate._private.gcs.server": "gcs",
    "skate._private.gcs.supervisor": "gcs-supervisor",
    "skate._private.raylet.server": "raylet",
    "skate._private.raylet.zygote": "zygote",
    "skate.dashboard.__main__": "dashboard",
}


def set_title(what: str) -> None:
    """Sets this process's title to ``skate::<what>``."""
    if _set is not None:
        _set(PREFIX + what)


def daemon_name() -> str | None:
    """``"gcs"`` / ``"raylet"`` / ``"zygote"`` when this process runs that daemon's module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return _DAEMONS.get(getattr(spec, "name", None) or "")


def is_skate_process(cmdline: list[str]) -> bool:
    """True for a command line (as ``ps`` shows it) of a skate daemon or worker."""
    text = " ".join(cmdline)
    return text.startswith(PREFIX) or "skate._private" in text


def call_title(spec: dict, actor_name: str) -> str:
    """The title while the task or actor call described by ``spec`` runs."""
    if "m" in spec:
        return f"{actor_name}.{spec['m']}"
    if "aid" in spec:
        return f"{spec.get('n') or actor_name}.__init__"
    return spec.get("n") or "task"


def run_titled(executor: Any, fn: Callable[[dict, list, Any], None], spec: dict, bufs: list, rep: Any) -> None:
    """Runs ``fn(spec, bufs, rep)`` (a task, actor creation or call) under its title.

    Afterwards the title goes back to the actor's class name, or ``IDLE``.
    """
    if _set is None:
        fn(spec, bufs, rep)
        return
    _set(PREFIX + call_title(spec, executor.actor_name))
    try:
        fn(spec, bufs, rep)
    finally:
        _set(PREFIX + (executor.actor_name or "IDLE"))
