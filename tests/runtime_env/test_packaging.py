"""Packing, uploading and unpacking runtime_env packages (no cluster: an in-memory store)."""

from __future__ import annotations

import os
import threading
import zipfile

import pytest

from skate._private.runtime_env import packaging


class MemKV:
    """A key-value store in a dict, counting writes."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.puts = 0

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes, overwrite: bool) -> bool:
        if not overwrite and key in self.data:
            return False
        self.puts += 1
        self.data[key] = value
        return True

    def exists(self, key: str) -> bool:
        return key in self.data


def write(root, rel: str, text: str = "x") -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def names(data: bytes) -> set[str]:
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n for n in zf.namelist() if not n.endswith("/")}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "proj"
    for rel in ("main.py", "pkg/__init__.py", "pkg/mod.py", "data/big.bin", "data/keep.txt",
                "logs/a.log", "sub/logs/b.log", "sub/x.pyc", "build/out.o", "notes.md"):
        write(root, rel, rel)
    return root


def test_pack_is_deterministic_and_hash_names_content(tree):
    a = packaging.pack(str(tree))
    b = packaging.pack(str(tree))
    assert a == b
    uri = packaging.uri_of(a)
    assert packaging.is_package_uri(uri) and uri.startswith("gcs://_skate_pkg_") and uri.endswith(".zip")
    write(tree, "main.py", "changed")
    assert packaging.uri_of(packaging.pack(str(tree))) != uri


def test_excludes_follow_gitignore_syntax(tree):
    data = packaging.pack(str(tree), excludes=["*.log", "/data/*.bin", "build/", "**/*.pyc", "notes.md", "!keep.txt"])
    got = names(data)
    assert got == {"main.py", "pkg/__init__.py", "pkg/mod.py", "data/keep.txt"}


def test_anchored_pattern_matches_only_at_the_root(tree):
    got = names(packaging.pack(str(tree), excludes=["/logs"]))
    assert "logs/a.log" not in got and "sub/logs/b.log" in got
    got = names(packaging.pack(str(tree), excludes=["logs"]))
    assert "logs/a.log" not in got and "sub/logs/b.log" not in got


def test_gitignore_files_are_honoured_and_can_be_turned_off(tree, monkeypatch):
    write(tree, ".gitignore", "build/\n# comment\n*.md\n")
    write(tree, "sub/.gitignore", "*.pyc\n")
    got = names(packaging.pack(str(tree)))
    assert "build/out.o" not in got and "notes.md" not in got and "sub/x.pyc" not in got
    assert "main.py" in got and ".gitignore" in got
    monkeypatch.setenv("SKATE_RUNTIME_ENV_IGNORE_GITIGNORE", "1")
    got = names(packaging.pack(str(tree)))
    assert "build/out.o" in got and "sub/x.pyc" in got


def test_pattern_parser_corner_cases():
    rules = packaging.parse_patterns(["a/**/b", "doc/*.txt", "[ab].py", "\\#hash", "dir/"])
    ex = lambda rel, d=False: packaging._excluded(rules, rel, d)  # noqa: E731
    assert ex("a/b") and ex("a/x/y/b")
    assert ex("doc/x.txt") and not ex("doc/sub/x.txt")
    assert ex("a.py") and ex("z/b.py") and not ex("c.py")
    assert ex("#hash")
    assert ex("dir", True) and not ex("dir", False)


def test_upload_once_then_unpack_once(tree, tmp_path):
    kv = MemKV()
    uri = packaging.upload_path(kv, str(tree), excludes=["data"])
    assert kv.puts == 1
    assert packaging.upload_path(kv, str(tree), excludes=["data"]) == uri
    assert kv.puts == 1  # same content: not stored again
    cache = str(tmp_path / "cache")
    assert packaging.unpacked_path(cache, uri) is None
    path = packaging.download_and_unpack(kv, uri, cache)
    assert os.path.basename(path) == "_skate_pkg_" + uri[len("gcs://_skate_pkg_"):-4]
    with open(os.path.join(path, "pkg", "mod.py")) as f:
        assert f.read() == "pkg/mod.py"
    assert not os.path.exists(os.path.join(path, "data"))
    kv.data.clear()  # cached: the store is not asked again
    assert packaging.download_and_unpack(kv, uri, cache) == path


def test_py_module_package_keeps_its_folder_name(tree, tmp_path):
    kv = MemKV()
    uri = packaging.upload_path(kv, str(tree / "pkg"), include_parent_dir=True)
    path = packaging.download_and_unpack(kv, uri, str(tmp_path / "c"))
    assert os.path.isfile(os.path.join(path, "pkg", "mod.py"))
    single = packaging.upload_path(kv, str(tree / "main.py"))
    path = packaging.download_and_unpack(kv, single, str(tmp_path / "c"))
    assert os.listdir(path) == ["main.py"]


def test_a_zip_is_uploaded_as_is_and_one_top_folder_is_its_root(tree, tmp_path):
    zpath = tmp_path / "wd.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("top/hello.txt", "hi")
    kv = MemKV()
    uri = packaging.upload_path(kv, str(zpath))
    assert kv.data[uri] == zpath.read_bytes()
    path = packaging.download_and_unpack(kv, uri, str(tmp_path / "c"))
    root = packaging.package_root(path)
    assert os.path.basename(root) == "top"
    assert open(os.path.join(root, "hello.txt")).read() == "hi"


def test_file_modes_survive(tree, tmp_path):
    os.chmod(tree / "main.py", 0o755)
    kv = MemKV()
    uri = packaging.upload_path(kv, str(tree))
    path = packaging.download_and_unpack(kv, uri, str(tmp_path / "c"))
    assert os.stat(os.path.join(path, "main.py")).st_mode & 0o777 == 0o755


def test_errors_name_the_problem(tree, tmp_path, monkeypatch):
    kv = MemKV()
    with pytest.raises(packaging.PackagingError, match="does not exist"):
        packaging.upload_path(kv, str(tmp_path / "missing"))
    with pytest.raises(packaging.PackagingError, match="not in the cluster's key-value store"):
        packaging.download_and_unpack(kv, "gcs://_skate_pkg_" + "0" * 32 + ".zip", str(tmp_path / "c"))
    with pytest.raises(packaging.PackagingError, match="not a skate package URI"):
        packaging.unpacked_path(str(tmp_path), "s3://bucket/x.zip")
    data = packaging.pack(str(tree))
    with pytest.raises(packaging.PackagingError, match="do not match its hash"):
        packaging.unpack(packaging.uri_of(data + b"x"), data, str(tmp_path / "c"))
    monkeypatch.setenv("SKATE_RUNTIME_ENV_MAX_PACKAGE_BYTES", "10")
    with pytest.raises(packaging.PackagingError, match="larger than 10 bytes"):
        packaging.pack(str(tree))


def test_entries_outside_the_folder_are_refused(tmp_path):
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "x")
    data = buf.getvalue()
    with pytest.raises(packaging.PackagingError, match="outside its folder"):
        packaging.unpack(packaging.uri_of(data), data, str(tmp_path / "c"))
    assert not (tmp_path / "evil.txt").exists()


def test_concurrent_unpackers_agree(tree, tmp_path):
    data = packaging.pack(str(tree))
    uri = packaging.uri_of(data)
    cache = str(tmp_path / "c")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(packaging.unpack(uri, data, cache))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(results)) == 1 and len(results) == 6
    assert sorted(os.listdir(cache)) == [os.path.basename(results[0])]  # no temporary folders left
