"""A node's log folder as the state commands see it: list files by glob, read a piece of one.

Served by the node daemon (``log_list`` / ``log_read``) so ``skate logs``
works for nodes on other hosts, over the cluster's authenticated
connections.  Only plain files directly in the folder can be read.
"""

from __future__ import annotations

import fnmatch
import os

#: Most bytes one ``log_read`` returns.
MAX_CHUNK = 4 << 20


def list_files(logs_dir: str | None, glob: str) -> list[dict]:
    """Files of ``logs_dir`` whose names match ``glob``, sorted by name."""
    if not logs_dir:
        return []
    out = []
    try:
        names = sorted(os.listdir(logs_dir))
    except OSError:
        return []
    for name in names:
        if not fnmatch.fnmatchcase(name, glob or "*"):
            continue
        try:
            st = os.stat(os.path.join(logs_dir, name))
        except OSError:
            continue
        if os.path.isfile(os.path.join(logs_dir, name)):
            out.append({"name": name, "size": st.st_size, "mtime": st.st_mtime})
    return out


def _start_of_tail(f: object, size: int, lines: int) -> int:
    """The offset ``lines`` lines before the end of the file."""
    pos, found, block = size, 0, 65536
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)  # type: ignore[attr-defined]
        data = f.read(step)  # type: ignore[attr-defined]
        end = len(data) - (1 if pos + step == size and data.endswith(b"\n") else 0)
        for i in range(end - 1, -1, -1):
            if data[i] == 0x0A:
                found += 1
                if found == lines:
                    return pos + i + 1
    return 0


def read(logs_dir: str | None, body: dict) -> dict:
    """A piece of one log file (``state_messages.LogRead`` -> ``LogChunk``).

    Raises:
        FileNotFoundError: no such file in the folder (names with a path are refused).
    """
    name = body["name"]
    if not logs_dir or os.path.basename(name) != name or name in ("", ".", ".."):
        raise FileNotFoundError(f"no log file {name!r} on this node")
    path = os.path.join(logs_dir, name)
    try:
        f = open(path, "rb")
    except OSError:
        raise FileNotFoundError(f"no log file {name!r} on this node") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        offset = body.get("offset")
        tail = body.get("tail_lines", -1)
        if offset is None:
            offset = 0 if tail is None or tail < 0 else _start_of_tail(f, size, tail)
        elif offset < 0:
            offset = max(size + offset, 0)
        f.seek(offset)
        data = f.read(max(1, min(body.get("max_bytes", MAX_CHUNK), MAX_CHUNK)))
    return {"data": data, "offset": offset + len(data), "size": size}
