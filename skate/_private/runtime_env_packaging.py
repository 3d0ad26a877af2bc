"""A ``runtime_env`` ``working_dir``: zipped here, kept in the control store's KV, unpacked there.

::

    client: package(dir, excludes) --zip, named by its content hash--> kv_put("runtime_env_packages", uri)
    head:   kv_get(uri) --> unpack(zip, <session>/runtime_resources/working_dir_files/<hash>/) --> cwd

The URI (``gcs://_skate_pkg_<sha1>.zip``) names the zip's contents, so the
same folder is uploaded once however many jobs use it.  ``excludes`` follow
the subset of ``.gitignore`` syntax Ray documents for ``runtime_env``: a
pattern without ``/`` matches a file or folder name at any depth (``*.log``,
``__pycache__``), one with ``/`` matches a path relative to the folder (a
leading ``/`` anchors it at the top), and a trailing ``/`` matches folders
only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import zipfile

#: The KV namespace packages live in.
KV_NAMESPACE = "runtime_env_packages"
URI_PREFIX = "gcs://_skate_pkg_"
#: Larger folders are refused: they would sit in the control store's memory.
MAX_PACKAGE_BYTES = 512 << 20
# Zip entries get a fixed time so the same files always hash the same.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _excluded(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        dir_only = pat.endswith("/")
        pat = pat.strip("/") if dir_only else pat
        if not pat or (dir_only and not is_dir):
            continue
        if "/" in pat or pat.startswith("/"):
            if fnmatch.fnmatchcase(rel, pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(parts[-1], pat):
            return True
    return False


def package(path: str, excludes: list[str] | None = None) -> tuple[str, bytes]:
    """Zips the folder ``path`` (or takes a ``.zip`` file as is); returns ``(uri, zip bytes)``.

    Raises:
        ValueError: ``path`` is neither a folder nor a zip file, an exclude is
            not a string, or the package is over ``MAX_PACKAGE_BYTES``.
    """
    excludes = list(excludes or [])
    if not all(isinstance(p, str) for p in excludes):
        raise ValueError(f"runtime_env 'excludes' must be a list of strings, not {excludes!r}")
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            data = f.read()
    elif os.path.isdir(path):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for root, dirs, files in os.walk(path):
                rel_root = os.path.relpath(root, path).replace(os.sep, "/")
                rel_root = "" if rel_root == "." else rel_root + "/"
                dirs[:] = sorted(d for d in dirs if not _excluded(rel_root + d, True, excludes))
                for name in sorted(files):
                    rel = rel_root + name
                    full = os.path.join(root, name)
                    if _excluded(rel, False, excludes) or not os.path.isfile(full):
                        continue
                    info = zipfile.ZipInfo(rel, _EPOCH)
                    info.external_attr = (os.stat(full).st_mode & 0o777) << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    with open(full, "rb") as f:
                        zf.writestr(info, f.read())
        data = buf.getvalue()
    else:
        raise ValueError(f"runtime_env 'working_dir' {path!r} is not a local folder or .zip file")
    if len(data) > MAX_PACKAGE_BYTES:
        raise ValueError(
            f"runtime_env 'working_dir' {path!r} packs to {len(data) >> 20} MiB, over the "
            f"{MAX_PACKAGE_BYTES >> 20} MiB limit; leave large files out with 'excludes'"
        )
    return URI_PREFIX + hashlib.sha1(data).hexdigest() + ".zip", data


def is_package_uri(value: str) -> bool:
    """True for a URI ``package`` made."""
    return isinstance(value, str) and value.startswith(URI_PREFIX) and value.endswith(".zip")


def unpack(uri: str, data: bytes, root: str) -> str:
    """Unpacks a package under ``root`` (once per URI); returns its folder.

    Raises:
        ValueError: an entry would land outside the folder.
    """
    name = uri[len(URI_PREFIX):-len(".zip")]
    dest = os.path.join(root, name)
    if os.path.isdir(dest):
        return dest
    tmp = f"{dest}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
    os.makedirs(tmp, mode=0o700)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                target = os.path.realpath(os.path.join(tmp, info.filename))
                if not target.startswith(os.path.realpath(tmp) + os.sep):
                    raise ValueError(f"package {uri}: entry {info.filename!r} points outside its folder")
                zf.extract(info, tmp)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(target, mode | 0o600)
        try:
            os.rename(tmp, dest)
        except OSError:  # unpacked by someone else meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
