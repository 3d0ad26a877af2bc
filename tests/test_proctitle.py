"""Process titles: `ps` tells the control store, node daemon, zygote, idle workers,
tasks, actors and actor calls apart (``skate::...``, like Ray's ``ray::...``)."""

from __future__ import annotations

import psutil
import pytest
from conftest import wait_for

import skate
from skate._private import proctitle


def _title(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline()).strip()


def _own_title() -> str:
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode()


@skate.remote
def titled_task():
    import os

    return _own_title(), os.getpid()


@skate.remote
class Counter:
    def title_now(self):
        import os

        return _own_title(), os.getpid()


def test_daemon_titles(ray_start):
    me = psutil.Process()
    titles = wait_for(
        lambda: (t := {_title(p.pid) for p in me.children(recursive=True)}) >= {"skate::gcs", "skate::raylet", "skate::zygote"} and t,
        30, what="the daemons' titles",
    )
    assert "skate::IDLE" in titles or any(t.startswith("skate::") for t in titles)


def test_task_title_while_running_then_idle(ray_start):
    title, pid = skate.get(titled_task.remote())
    assert title == "skate::titled_task"
    wait_for(lambda: _title(pid) == "skate::IDLE", 10, what="the worker's title to go back to IDLE")
    named, _ = skate.get(titled_task.options(name="custom_name").remote())
    assert named == "skate::custom_name"


def test_actor_titles(ray_start):
    c = Counter.remote()
    title, pid = skate.get(c.title_now.remote())
    assert title == "skate::Counter.title_now"
    wait_for(lambda: _title(pid) == "skate::Counter", 10, what="the actor's title between calls")


@pytest.mark.parametrize(
    "spec, actor, want",
    [
        ({"n": "f", "t": b""}, "", "f"),
        ({"m": "incr"}, "Counter", "Counter.incr"),
        ({"n": "Counter", "aid": b"x"}, "", "Counter.__init__"),
    ],
)
def test_call_title(spec, actor, want):
    assert proctitle.call_title(spec, actor) == want


def test_is_skate_process():
    assert proctitle.is_skate_process(["skate::raylet"])
    assert proctitle.is_skate_process(["python", "-m", "skate._private.gcs.server"])
    assert not proctitle.is_skate_process(["python", "-m", "http.server"])


@skate.remote
class AsyncActor:
    async def title_now(self):
        return _own_title()


def test_async_actor_keeps_its_class_title(ray_start):
    """Several calls of an async actor run at once, so none of them names the process."""
    a = AsyncActor.remote()
    assert skate.get(a.title_now.remote()) == "skate::AsyncActor"
