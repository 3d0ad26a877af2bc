"""The control store's table of blocked calls (``report_waits``), for the dashboard.

Each process that blocks in ``get``/``wait`` for over a second, or whose
actor calls wait for a reply, reports it (``core_worker/waits.py``); the
latest report per process is kept, and forgotten when it is empty or has
not been repeated for ``STALE_S`` seconds (the process died, say).
"""

from __future__ import annotations

import time

#: A report not repeated for this long is dropped (processes repeat theirs every 5 s).
STALE_S = 12.0


class WaitTable:
    """The control store's side: the latest report of each process, forgotten when stale."""

    def __init__(self) -> None:
        self.reports: dict[bytes, tuple[float, dict]] = {}

    def add(self, report: dict) -> None:
        if report.get("blocked") or report.get("actors"):
            self.reports[report["worker_id"]] = (time.monotonic(), report)
        else:
            self.reports.pop(report["worker_id"], None)

    def list(self) -> list[dict]:
        now = time.monotonic()
        for key in [k for k, (at, _) in self.reports.items() if now - at > STALE_S]:
            del self.reports[key]
        return [r for _, r in self.reports.values()]
