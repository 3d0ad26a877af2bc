"""A node's log folder as served to `skate logs`: listing by glob, reading pieces, tails, no escapes."""

from __future__ import annotations

import pytest

from skate._private.raylet import log_files


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "worker-1.out").write_text("".join(f"line {i}\n" for i in range(10)))
    (tmp_path / "worker-1.err").write_text("oops\n")
    (tmp_path / "gcs-7.log").write_text("no newline at the end")
    (tmp_path / "sub").mkdir()
    return str(tmp_path)


def test_list_by_glob(folder):
    assert [f["name"] for f in log_files.list_files(folder, "*")] == ["gcs-7.log", "worker-1.err", "worker-1.out"]
    assert [f["name"] for f in log_files.list_files(folder, "worker-*.out")] == ["worker-1.out"]
    assert log_files.list_files(folder, "worker-1.out")[0]["size"] == 70
    assert log_files.list_files(None, "*") == [] and log_files.list_files(folder + "/nope", "*") == []


def test_tail_lines_and_offsets(folder):
    whole = log_files.read(folder, {"name": "worker-1.out"})
    assert whole["data"].decode().splitlines()[0] == "line 0" and whole["offset"] == whole["size"] == 70
    tail = log_files.read(folder, {"name": "worker-1.out", "tail_lines": 3})
    assert tail["data"] == b"line 7\nline 8\nline 9\n"
    assert log_files.read(folder, {"name": "gcs-7.log", "tail_lines": 1})["data"] == b"no newline at the end"
    assert log_files.read(folder, {"name": "worker-1.out", "tail_lines": 50})["data"] == whole["data"]
    piece = log_files.read(folder, {"name": "worker-1.out", "offset": 7, "max_bytes": 7})
    assert piece["data"] == b"line 1\n" and piece["offset"] == 14
    assert log_files.read(folder, {"name": "worker-1.out", "offset": -7})["data"] == b"line 9\n"


@pytest.mark.parametrize("name", ["../token", "/etc/passwd", "sub/x", "", "..", "sub"])
def test_names_outside_the_folder_are_refused(folder, name):
    with pytest.raises(FileNotFoundError):
        log_files.read(folder, {"name": name})
