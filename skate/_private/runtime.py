"""The one explicit global: this process's core worker, if connected."""

from __future__ import annotations

from typing import Any

_core: Any = None


def current_or_none() -> Any:
    """The core worker of this process, or None before ``init``."""
    return _core


def current() -> Any:
    """The core worker of this process; connects a local cluster if none (like Ray)."""
    if _core is None:
        import skate

        skate.init()
    return _core


def set_current(core: Any) -> None:
    """Installs (or clears, with None) this process's core worker."""
    global _core
    _core = core
