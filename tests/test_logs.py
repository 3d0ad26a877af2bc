"""Log folders: one per session next to the session folder, kept after it stops, bounded."""

from __future__ import annotations

import os
import shutil

from skate._private import logs, node


def test_session_log_folder_outlives_its_session(tmp_path):
    session_dir, _, _ = node.new_session(str(tmp_path))
    folder = logs.session_logs_dir(session_dir)
    assert folder == os.path.join(str(tmp_path), "logs", os.path.basename(session_dir))
    assert os.path.isdir(folder)
    shutil.rmtree(session_dir)
    assert os.path.isdir(folder)


def test_only_the_last_sessions_are_kept(tmp_path, monkeypatch):
    from skate._private.config import CONFIG

    monkeypatch.setattr(CONFIG, "logs_kept", 3)
    base = str(tmp_path)
    live, _, _ = node.new_session(base)  # still running: never removed
    done = []
    for i in range(5):
        session_dir, _, _ = node.new_session(base)
        folder = logs.session_logs_dir(session_dir)
        os.utime(folder, (1000 + i, 1000 + i))  # mtimes in start order
        shutil.rmtree(session_dir)
        done.append(os.path.basename(session_dir))
    kept = set(os.listdir(logs.logs_root(base)))
    assert os.path.basename(live) in kept
    assert kept - {os.path.basename(live)} == set(done[-2:])
    shutil.rmtree(live)


def test_worker_logs_bounded_open_files(tmp_path):
    w = logs.WorkerLogs(str(tmp_path), max_open=2)
    for pid in (1, 2, 3, 1):
        w.write(pid, b"line %d\n" % pid, False)
    w.write(2, b"oops", True)
    assert len(w.fds) == 2
    w.close()
    assert open(tmp_path / "worker-1.out").read() == "line 1\nline 1\n"
    assert open(tmp_path / "worker-2.err").read() == "oops\n"


def test_tail(tmp_path):
    p = tmp_path / "x.log"
    p.write_text("".join(f"l{i}\n" for i in range(100)))
    assert logs.tail(str(p), 2) == "l98\nl99"
    assert logs.tail(str(tmp_path / "missing"), 2) == ""
