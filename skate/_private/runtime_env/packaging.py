"""Packages of local files for runtime environments: pack, upload, download, unpack.

A ``working_dir`` or a ``py_modules`` entry names local files on the
driver.  The driver packs them into a zip, names the zip by a hash of its
bytes, and stores it in the control store's key-value table; each node
fetches the zip by that name once and unpacks it into a cache folder keyed
by the same hash, which every worker using that package shares::

    driver:  directory --pack()--> zip bytes --uri_of()--> gcs://_skate_pkg_<hash>.zip
             upload(kv, uri, bytes)            (skipped when the key already exists)
    node:    unpacked_path(cache, uri)         (already here?)
             download_and_unpack(kv, uri, cache) or unpack(uri, bytes, cache)

Zips are deterministic (sorted entries, fixed timestamps), so the same
files give the same hash, and a package is uploaded once however many
tasks use it.  Files are left out by ``excludes`` patterns and by the
``.gitignore`` files found in the tree (gitignore syntax, like Ray; set
``SKATE_RUNTIME_ENV_IGNORE_GITIGNORE=1`` to not read ``.gitignore`` files).

Nothing here talks to the network: the key-value store is any object with
``get(key) -> bytes | None``, ``put(key, value, overwrite) -> bool`` and
``exists(key) -> bool`` (see ``KVStore``), so the driver, the node daemon and
the job submission server can each plug in their own client.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from typing import Protocol

#: URI scheme and name prefix of packages stored in the control store.
GCS_SCHEME = "gcs://"
PKG_PREFIX = "_skate_pkg_"
#: Key-value namespace that holds the packages.
KV_NAMESPACE = "runtime_env_packages"
#: The largest package accepted, in bytes (``SKATE_RUNTIME_ENV_MAX_PACKAGE_BYTES``).
DEFAULT_MAX_PACKAGE_BYTES = 512 * 1024 * 1024

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_URI_RE = re.compile(r"^gcs://_skate_pkg_([0-9a-f]{32})\.zip$")


class PackagingError(ValueError):
    """A package could not be made from the given path (missing, too big, wrong kind)."""


class KVStore(Protocol):
    """What packaging needs from a key-value store (keys are package URIs)."""

    def get(self, key: str) -> bytes | None: ...  # pragma: no cover - protocol
    def put(self, key: str, value: bytes, overwrite: bool) -> bool: ...  # pragma: no cover
    def exists(self, key: str) -> bool: ...  # pragma: no cover


def max_package_bytes() -> int:
    """The largest package accepted, in bytes."""
    return int(os.environ.get("SKATE_RUNTIME_ENV_MAX_PACKAGE_BYTES", DEFAULT_MAX_PACKAGE_BYTES))


# --- gitignore-style patterns ---------------------------------------------------------------
class _Rule:
    __slots__ = ("base", "regex", "negate", "dir_only")

    def __init__(self, base: str, regex: re.Pattern, negate: bool, dir_only: bool) -> None:
        self.base = base  # folder (relative, "" for the root) the pattern is relative to
        self.regex = regex
        self.negate = negate
        self.dir_only = dir_only


def _glob_to_regex(glob: str) -> str:
    out = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = glob.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_patterns(lines: Iterable[str], base: str = "") -> list[_Rule]:
    """Rules from gitignore-syntax lines, relative to the folder ``base`` ("" = the root).

    Supported: ``#`` comments, ``!`` negation, a trailing ``/`` for folders
    only, a ``/`` at the start or inside for a path relative to ``base``
    (otherwise the name matches at any depth), ``*``, ``?``, ``[...]`` and ``**``.
    """
    rules = []
    for raw in lines:
        line = raw.rstrip("\n").rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        line = line.rstrip() if not line.endswith("\\ ") else line
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        regex = _glob_to_regex(line)
        if not anchored:
            regex = "(?:.*/)?" + regex
        rules.append(_Rule(base, re.compile("^" + regex + "$", re.DOTALL), negate, dir_only))
    return rules


def _excluded(rules: list[_Rule], rel: str, is_dir: bool) -> bool:
    verdict = False
    for r in rules:
        if r.dir_only and not is_dir:
            continue
        if r.base:
            if not rel.startswith(r.base + "/"):
                continue
            sub = rel[len(r.base) + 1:]
        else:
            sub = rel
        if r.regex.match(sub):
            verdict = not r.negate
    return verdict


def _use_gitignore() -> bool:
    return os.environ.get("SKATE_RUNTIME_ENV_IGNORE_GITIGNORE", "0") in ("", "0")


def walk(root: str, excludes: Iterable[str] = ()) -> Iterator[tuple[str, str, bool]]:
    """The files and folders under ``root`` that ``excludes`` and ``.gitignore`` files keep.

    Yields ``(absolute path, relative path with "/", is_dir)`` in sorted order;
    an excluded folder is not entered.  Links to folders are not followed.
    """
    rules = parse_patterns(excludes)
    gitignore = _use_gitignore()

    def visit(folder: str, rel_folder: str) -> Iterator[tuple[str, str, bool]]:
        nonlocal rules
        if gitignore:
            gi = os.path.join(folder, ".gitignore")
            if os.path.isfile(gi):
                with open(gi, encoding="utf-8", errors="replace") as f:
                    rules = rules + parse_patterns(f, rel_folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise PackagingError(f"cannot list {folder}: {e}") from e
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if _excluded(rules, rel, is_dir):
                continue
            yield entry.path, rel, is_dir
            if is_dir:
                saved = rules
                yield from visit(entry.path, rel)
                rules = saved

    yield from visit(root, "")


# --- packing ----------------------------------------------------------------------------------
def _add(zf: zipfile.ZipFile, path: str, arcname: str, is_dir: bool) -> None:
    st = os.stat(path)
    if is_dir:
        info = zipfile.ZipInfo(arcname.rstrip("/") + "/", _FIXED_TIME)
        info.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
        zf.writestr(info, b"")
        return
    if not stat.S_ISREG(st.st_mode):
        return  # sockets, fifos, devices: nothing to ship
    info = zipfile.ZipInfo(arcname, _FIXED_TIME)
    info.external_attr = (stat.S_IFREG | (st.st_mode & 0o777)) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(path, "rb") as f:
        zf.writestr(info, f.read())


def pack(path: str, excludes: Iterable[str] = (), include_parent_dir: bool = False) -> bytes:
    """Packs a folder or one file into deterministic zip bytes.

    ``include_parent_dir``: entries are ``<folder name>/...`` (a ``py_modules``
    package, importable from the unpacked root) instead of the folder's
    contents at the top (a ``working_dir``).  A file is stored under its name.

    Raises:
        PackagingError: the path does not exist, or the package is larger
            than ``SKATE_RUNTIME_ENV_MAX_PACKAGE_BYTES`` (512 MiB by default).
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise PackagingError(f"{path} does not exist")
    buf = io.BytesIO()
    limit = max_package_bytes()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if os.path.isfile(path):
            _add(zf, path, os.path.basename(path), False)
        else:
            prefix = os.path.basename(path.rstrip(os.sep)) + "/" if include_parent_dir else ""
            if prefix:
                _add(zf, path, prefix, True)
            for abs_path, rel, is_dir in walk(path, excludes):
                _add(zf, abs_path, prefix + rel, is_dir)
                total = buf.tell()
                if total > limit:
                    raise PackagingError(
                        f"the package of {path} is larger than {limit} bytes; leave big files out with "
                        "`excludes` or a .gitignore, or raise SKATE_RUNTIME_ENV_MAX_PACKAGE_BYTES"
                    )
    data = buf.getvalue()
    if len(data) > limit:
        raise PackagingError(f"the package of {path} ({len(data)} bytes) is larger than {limit} bytes")
    return data


def read_zip(path: str) -> bytes:
    """The bytes of a ready-made ``.zip`` file (checked to be a zip).

    Raises:
        PackagingError: missing, not a zip, or too big.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not zipfile.is_zipfile(path):
        raise PackagingError(f"{path} is not a zip file")
    if os.path.getsize(path) > max_package_bytes():
        raise PackagingError(f"{path} is larger than {max_package_bytes()} bytes")
    with open(path, "rb") as f:
        return f.read()


def uri_of(data: bytes) -> str:
    """The package's name: ``gcs://_skate_pkg_<32 hex digits of a hash of the bytes>.zip``."""
    return f"{GCS_SCHEME}{PKG_PREFIX}{hashlib.blake2b(data, digest_size=16).hexdigest()}.zip"


def is_package_uri(uri: str) -> bool:
    """True for a name made by ``uri_of``."""
    return isinstance(uri, str) and _URI_RE.match(uri) is not None


def upload(kv: KVStore, uri: str, data: bytes) -> bool:
    """Stores a package unless it is there already; True when it was written now."""
    if kv.exists(uri):
        return False
    return kv.put(uri, data, False)


def upload_path(kv: KVStore, path: str, excludes: Iterable[str] = (), include_parent_dir: bool = False) -> str:
    """Packs ``path`` (a folder, a file, or a ``.zip`` taken as is), uploads it, returns its URI.

    Raises:
        PackagingError: as ``pack`` and ``read_zip``.
    """
    full = os.path.abspath(os.path.expanduser(path))
    if full.endswith(".zip") and os.path.isfile(full):
        data = read_zip(full)
    else:
        data = pack(full, excludes, include_parent_dir)
    uri = uri_of(data)
    upload(kv, uri, data)
    return uri


# --- unpacking --------------------------------------------------------------------------------
def _hash_of(uri: str) -> str:
    m = _URI_RE.match(uri)
    if m is None:
        raise PackagingError(f"{uri!r} is not a skate package URI (gcs://{PKG_PREFIX}<hash>.zip)")
    return m.group(1)


def _root_of(folder: str) -> str:
    """A zip holding exactly one top folder unpacks to that folder (like Ray's zip working_dir)."""
    names = [n for n in os.listdir(folder) if n != "__MACOSX"]
    if len(names) == 1 and os.path.isdir(os.path.join(folder, names[0])):
        return os.path.join(folder, names[0])
    return folder


def unpacked_path(cache_dir: str, uri: str) -> str | None:
    """Where the package is unpacked in ``cache_dir``, or None if it is not yet."""
    target = os.path.join(cache_dir, PKG_PREFIX + _hash_of(uri))
    return target if os.path.isdir(target) else None


def unpack(uri: str, data: bytes, cache_dir: str) -> str:
    """Unpacks a package's bytes into ``cache_dir/_skate_pkg_<hash>`` (once); returns the folder.

    Safe against concurrent unpackers of the same package (each unpacks
    into a private folder, and the first rename wins).  Entries that would
    land outside the folder are refused.

    Raises:
        PackagingError: the bytes do not match the URI's hash, or the zip is bad.
    """
    h = _hash_of(uri)
    target = os.path.join(cache_dir, PKG_PREFIX + h)
    if os.path.isdir(target):
        return target
    if uri_of(data) != uri:
        raise PackagingError(f"the bytes fetched for {uri} do not match its hash")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{PKG_PREFIX}{h}-", dir=cache_dir)
    try:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    dest = os.path.realpath(os.path.join(tmp, info.filename))
                    if not dest.startswith(os.path.realpath(tmp) + os.sep) and dest != os.path.realpath(tmp):
                        raise PackagingError(f"{uri} holds an entry outside its folder: {info.filename!r}")
                    zf.extract(info, tmp)
                    mode = (info.external_attr >> 16) & 0o777
                    if mode and not info.is_dir():
                        os.chmod(dest, mode)
        except zipfile.BadZipFile as e:
            raise PackagingError(f"{uri} is not a valid zip: {e}") from e
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.isdir(target):  # not lost to a concurrent unpacker: a real error
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def package_root(unpacked: str) -> str:
    """The folder a ``working_dir`` package is used from: the unpacked folder, or its only
    top folder when the package was a zip holding one folder."""
    return _root_of(unpacked)


def download_and_unpack(kv: KVStore, uri: str, cache_dir: str) -> str:
    """The unpacked folder of a package, fetching it from ``kv`` if this cache lacks it.

    Raises:
        PackagingError: the package is not in the store (it was never uploaded,
            or the cluster lost it), or as ``unpack``.
    """
    found = unpacked_path(cache_dir, uri)
    if found is not None:
        return found
    data = kv.get(uri)
    if data is None:
        raise PackagingError(f"the package {uri} is not in the cluster's key-value store")
    return unpack(uri, data, cache_dir)
