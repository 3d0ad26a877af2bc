"""A job's ``working_dir``, as the job submission client and server use it.

A thin layer over ``skate._private.runtime_env.packaging`` (the one package
format of every runtime_env: ``gcs://_skate_pkg_<hash>.zip`` in the control
store's KV namespace ``runtime_env_packages``), with the errors the job API
raises (``ValueError``)::

    client: package(dir, excludes) --zip, named by its content hash--> kv_put("runtime_env_packages", uri)
    head:   kv_get(uri) --> unpack(uri, zip, <session>/runtime_resources/working_dir_files) --> cwd

``excludes`` use gitignore syntax (and ``.gitignore`` files in the folder
are honoured), as for tasks' and actors' runtime_env.
"""

from __future__ import annotations

import os

from skate._private.runtime_env import packaging

#: The KV namespace packages live in.
KV_NAMESPACE = packaging.KV_NAMESPACE
URI_PREFIX = packaging.GCS_SCHEME + packaging.PKG_PREFIX
#: Larger folders are refused: they would sit in the control store's memory.
MAX_PACKAGE_BYTES = packaging.DEFAULT_MAX_PACKAGE_BYTES


def package(path: str, excludes: list[str] | None = None) -> tuple[str, bytes]:
    """Zips the folder ``path`` (or takes a ``.zip`` file as is); returns ``(uri, zip bytes)``.

    Raises:
        ValueError: ``path`` is neither a folder nor a zip file, an exclude is
            not a string, or the package is over the size limit.
    """
    excludes = list(excludes or [])
    if not all(isinstance(p, str) for p in excludes):
        raise ValueError(f"runtime_env 'excludes' must be a list of strings, not {excludes!r}")
    full = os.path.abspath(os.path.expanduser(path))
    try:
        if os.path.isfile(full) and full.endswith(".zip"):
            data = packaging.read_zip(full)
        elif os.path.isdir(full):
            data = packaging.pack(full, excludes)
        else:
            raise ValueError(f"runtime_env 'working_dir' {path!r} is not a local folder or .zip file")
    except packaging.PackagingError as e:
        raise ValueError(f"runtime_env 'working_dir' {path!r}: {e}") from e
    return packaging.uri_of(data), data


def is_package_uri(value: str) -> bool:
    """True for a URI ``package`` made."""
    return packaging.is_package_uri(value)


def unpack(uri: str, data: bytes, root: str) -> str:
    """Unpacks a package under ``root`` (once per URI); returns the folder to use as the
    working directory (a zip holding one folder is used from that folder, like Ray).

    Raises:
        ValueError: a bad zip, bytes that do not match the URI, or an entry
            that would land outside the folder.
    """
    try:
        return packaging.package_root(packaging.unpack(uri, data, root))
    except packaging.PackagingError as e:
        raise ValueError(str(e)) from e
