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

    __slots__ = ("sig", "name", "min_pos", "max_pos", "names", "required", "npos")

    def __init__(self, fn: Any, name: str, drop_first: bool = False) -> None:
        self.name = name
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature: nothing to check
            self.sig = None
            self.min_pos = 0
            self.max_pos = -1
            self.names, self.required, self.npos = None, frozenset(), 0
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
        # Keyword fast path: plain parameters only (no *args, **kwargs or positional-only).
        self.names: tuple | None = None
        self.required: frozenset = frozenset()
        self.npos = len(positional)
        if all(p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY) for p in params):
            self.names = tuple(p.name for p in params)
            self.required = frozenset(p.name for p in params if p.default is _P.empty)
        if required_kwonly:
            self.max_pos = -1  # never the positional fast path

    def check(self, args: tuple, kwargs: dict) -> None:
        """Raises TypeError (like calling the function would) if the arguments do not fit."""
        if not kwargs and self.min_pos <= len(args) <= self.max_pos:
            return
        if self.sig is None:
            return
        names = self.names
        if names is not None and len(args) <= len(names):
            given = names[: len(args)]
            # Every keyword is a parameter not already given by position, and every
            # required parameter is given: what bind() would accept (positional
            # parameters come first in ``names``).
            if (
                len(args) <= self.npos
                and kwargs.keys() <= set(names[len(args):])
                and self.required <= set(given).union(kwargs)
            ):
                return
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}(): {e}") from None

    def __getstate__(self) -> tuple:
        return (self.sig, self.name, self.min_pos, self.max_pos, self.names, self.required, self.npos)

    def __setstate__(self, state: tuple) -> None:
        self.sig, self.name, self.min_pos, self.max_pos, self.names, self.required, self.npos = state
