"""Checking a call's arguments against the callee's signature at the call site.

Like Ray, ``f.remote(...)``, ``Actor.remote(...)`` and ``handle.m.remote(...)``
bind the arguments to the signature before anything is submitted, so a wrong
call raises ``TypeError`` where it is made rather than later in a worker.

The common case costs two comparisons: when a signature has only plain
positional parameters (no keyword-only ones without defaults) and the call
passes positional arguments only, their count decides.  Anything else goes
through ``inspect.Signature.bind``.
"""

from __future__ import annotations

import inspect
from typing import Any

_P = inspect.Parameter


class CallSignature:
    """A picklable, default-free copy of a callable's signature that checks calls.

    Args:
        fn: The function or method.
        name: How calls are shown in errors, e.g. ``"f"`` or ``"Actor.method"``.
        drop_first: Drop the first parameter (``self`` of an actor method).
    """

    __slots__ = ("sig", "name", "min_pos", "max_pos")

    def __init__(self, fn: Any, name: str, drop_first: bool = False) -> None:
        self.name = name
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature: nothing to check
            self.sig = None
            self.min_pos = 0
            self.max_pos = -1
            return
        params = list(sig.parameters.values())
        if drop_first and params and params[0].kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
            params = params[1:]
        # Defaults only matter as "has one"; real defaults may be big or unpicklable.
        params = [
            p.replace(annotation=_P.empty, default=None if p.default is not _P.empty else _P.empty) for p in params
        ]
        self.sig = inspect.Signature(params)
        positional = [p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
        required_kwonly = any(p.kind is _P.KEYWORD_ONLY and p.default is _P.empty for p in params)
        self.min_pos = sum(1 for p in positional if p.default is _P.empty)
        if any(p.kind is _P.VAR_POSITIONAL for p in params):
            self.max_pos = 1 << 30
        else:
            self.max_pos = len(positional)
        if required_kwonly:
            self.max_pos = -1  # never the fast path

    def check(self, args: tuple, kwargs: dict) -> None:
        """Raises TypeError (like calling the function would) if the arguments do not fit."""
        if not kwargs and self.min_pos <= len(args) <= self.max_pos:
            return
        if self.sig is None:
            return
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}(): {e}") from None

    def __getstate__(self) -> tuple:
        return (self.sig, self.name, self.min_pos, self.max_pos)

    def __setstate__(self, state: tuple) -> None:
        self.sig, self.name, self.min_pos, self.max_pos = state
