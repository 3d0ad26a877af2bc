"""What the code running now in a worker is executing: the current task's spec.

The executor sets ``CURRENT`` around each task and actor call (a context
variable, so concurrent coroutines of an async actor and the threads of a
threaded actor each see their own call); ``get_runtime_context()`` reads it.
"""

from __future__ import annotations

from contextvars import ContextVar

CURRENT: ContextVar[dict | None] = ContextVar("skate_current_task", default=None)
"""The spec (wire body) of the task or actor call running in this context, or None."""
