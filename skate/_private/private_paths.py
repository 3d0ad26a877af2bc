"""Folders and files only this user can change: checked before skate trusts them.

skate keeps a cluster's address records and its token under the per-user
temp folder (``skate-<uid>`` in the system temp dir, which every local user
can write to).  Another local user who created that folder first, or who
could write into it, could point this user's ``init("auto")`` at a server of
theirs, or read the token.  So every folder skate reads such things from must
be owned by the current user and not writable by group or others, and every
file it reads a token or an address from must be owned by the current user
(a token file must not be readable by anyone else either).  Anything else is
refused with an ``UnsafePathError`` that says which path, who owns it and
what to do.

Files are opened with ``O_NOFOLLOW`` (a symlink planted in place of a file
is refused) and checked with ``fstat`` on the open descriptor, so a file
swapped between check and use is not trusted either.  New files are created
with ``O_EXCL`` and mode 0600; a file that is rewritten (``latest.json``) is
written to a fresh private name in the same verified folder, then renamed
over the old one.

The token itself never travels in an environment variable to a daemon or
worker (``environ_without_secrets``): they read it from the token file.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat


class UnsafePathError(RuntimeError):
    """A folder or file skate would trust can be changed (or read) by another user."""


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check(path: str, st: os.stat_result, kind: str, forbidden: int) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise UnsafePathError(
            f"skate refuses to use the {kind} {path}: it is owned by {_who(st.st_uid)}, not by "
            f"you ({_who(me)}), so that user could control what skate reads from it. Remove it "
            "(as its owner or root), or point SKATE_TEMP_DIR at a folder only you can write."
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & forbidden:
        what = "readable or writable" if forbidden & 0o044 else "writable"
        raise UnsafePathError(
            f"skate refuses to use the {kind} {path}: it is {what} by other users "
            f"(mode {mode:04o}). Run `chmod go-rwx {path}` if it is yours, or remove it."
        )


def check_dir(path: str) -> None:
    """Verifies ``path`` is a real folder (not a symlink) owned by this user, not group/other-writable.

    Raises:
        UnsafePathError: when it is not.
        FileNotFoundError: when it does not exist.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise UnsafePathError(
            f"skate refuses to use {path}: it is {kind} (owned by {_who(st.st_uid)}); "
            "skate expects a folder of its own there. Remove it, or set SKATE_TEMP_DIR elsewhere."
        )
    _check(path, st, "folder", 0o022)


def private_dir(path: str) -> str:
    """Creates ``path`` (mode 0700) unless it exists, then verifies it with ``check_dir``.

    Missing parent folders are created too (mode 0700).  Returns ``path``.

    Raises:
        UnsafePathError: when the folder exists but another user can change it.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    check_dir(path)
    return path


def read_private(path: str, secret: bool = False) -> bytes:
    """Reads a file owned by this user and not writable (``secret``: not even readable) by others.

    Raises:
        UnsafePathError: when another user owns it, could change it (or read
            a secret), or it is a symbolic link or not a regular file.
        FileNotFoundError: when it does not exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:  # the last component is a symbolic link
            raise UnsafePathError(f"skate refuses to read {path}: it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"skate refuses to read {path}: it is not a regular file")
        _check(path, st, "token file" if secret else "file", 0o077 if secret else 0o022)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_token(path: str) -> bytes:
    """The cluster token stored at ``path`` (see ``read_private``; the file must be owner-only)."""
    token = read_private(path, secret=True).strip()
    if not token:
        raise UnsafePathError(f"the token file {path} is empty")
    return token


def create_private(path: str, data: bytes) -> None:
    """Writes a new file with mode 0600; fails if anything (even a symlink) is already at ``path``.

    Raises:
        FileExistsError: when ``path`` exists.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def replace_private(path: str, data: bytes) -> None:
    """Atomically replaces ``path`` with a new 0600 file holding ``data``.

    The folder must already be verified private (``private_dir``): the new
    contents are written to a fresh name there first, then renamed.
    """
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    create_private(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


#: Environment variables that carry a cluster token; never passed to a daemon or worker.
SECRET_ENV = ("SKATE_CLUSTER_TOKEN", "SKATE_TOKEN")


def environ_without_secrets() -> dict:
    """This process's environment, less any variable that carries a cluster token.

    Daemons and workers read the token from the owner-only token file
    instead: what is in a process's environment reaches every subprocess
    it starts, and can be read in ``/proc/<pid>/environ``.
    """
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
