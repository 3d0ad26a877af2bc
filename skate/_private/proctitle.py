"""Process titles, so ``ps`` tells skate's processes apart (like Ray's ``ray::...``).

Every process of a cluster sets its title once it knows what it is:
``skate::gcs``, ``skate::raylet``, ``skate::zygote``; a worker is
``skate::IDLE`` until it runs something, ``skate::<task name>`` while a task
runs, ``skate::<ActorClass>`` once it hosts an actor and
``skate::<ActorClass>.<method>`` while a call of that actor runs.  Actors
that run several calls at once (async actors, ``max_concurrency > 1``) keep
``skate::<ActorClass>``: no single call is "the" one running.

Setting a title rewrites the process's argv area (about a microsecond), so a
worker sets a call's title only when it differs from the one shown, and the
idle title only when its loop is about to sleep.
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
    global _shown, _shown_method
    if _set is not None:
        _shown, _shown_method = what, None
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


_shown = ""  # the title last set by run_titled/settle (without the prefix)
_shown_method: str | None = None  # the actor method whose call title is up, if one is
_idle = "IDLE"  # the title to show once the worker waits for work


def run_titled(executor: Any, fn: Callable[[dict, list, Any], None], spec: dict, bufs: list, rep: Any) -> None:
    """Runs ``fn(spec, bufs, rep)`` (a task, actor creation or call) under its title.

    The title goes back to the actor's class name, or ``IDLE``, when the
    worker's loop next waits for work (``settle``): a worker that runs the
    same function back to back sets no title between the calls.
    """
    global _shown, _shown_method, _idle
    method = spec.get("m")
    if _set is None or (method is not None and method == _shown_method):
        fn(spec, bufs, rep)  # (the same method again: its title is still up)
        return
    title = call_title(spec, executor.actor_name)
    if title != _shown:
        _shown = title
        _set(PREFIX + title)
    _shown_method = method
    try:
        fn(spec, bufs, rep)
    finally:
        _idle = executor.actor_name or "IDLE"
        if "aid" in spec:  # a creation: an async actor's calls run on another loop, so settle now
            settle()


def settle() -> None:
    """Shows the idle title if a call's title is still up (the worker's loop
    calls this before it sleeps)."""
    global _shown, _shown_method
    if _shown != _idle and _set is not None:
        _shown, _shown_method = _idle, None
        _set(PREFIX + _idle)
