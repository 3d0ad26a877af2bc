"""A node's side of runtime environments without a cluster: fetch once, time out, apply."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from skate._private.runtime_env import packaging, worker_setup
from skate._private.runtime_env.node import NodeEnvs, SetupError, kv_value


def test_one_fetch_for_concurrent_starts_and_a_setup_to_apply(tmp_path):
    src = tmp_path / "wd"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("hi")
    data = packaging.pack(str(src))
    uri = packaging.uri_of(data)
    fetches = []

    async def fetch(u):
        fetches.append(u)
        await asyncio.sleep(0.05)
        return data

    async def main():
        envs = NodeEnvs(str(tmp_path / "cache"), fetch)
        renv = {"working_dir": uri, "env_vars": {"A": "1"}}
        setups = await asyncio.gather(*(envs.prepare(renv) for _ in range(5)))
        again = await envs.prepare(renv)
        return setups, again

    setups, again = asyncio.run(main())
    assert fetches == [uri]  # one download for five starts, none for the sixth
    assert all(s == again for s in setups)
    assert os.path.isfile(os.path.join(again["cwd"], "sub", "f.txt"))
    assert again["sys_path"] == [again["cwd"]] and again["env_vars"] == {"A": "1"}


def test_setup_timeout_seconds_is_honoured(tmp_path):
    async def slow(u):
        await asyncio.sleep(30)

    async def main():
        envs = NodeEnvs(str(tmp_path), slow)
        await envs.prepare({"working_dir": "gcs://_skate_pkg_" + "1" * 32 + ".zip", "config": {"setup_timeout_seconds": 1}})

    with pytest.raises(SetupError, match="setup_timeout_seconds"):
        asyncio.run(main())


def test_a_failing_fetch_is_a_setup_error(tmp_path):
    async def broken(u):
        raise ConnectionError("control store gone")

    async def main():
        await NodeEnvs(str(tmp_path), broken).prepare({"py_modules": ["gcs://_skate_pkg_" + "2" * 32 + ".zip"]})

    with pytest.raises(SetupError, match="ConnectionError: control store gone"):
        asyncio.run(main())


def test_kv_replies():
    assert kv_value(False) is None
    assert kv_value((True, [b"v"])) == b"v"
    assert kv_value((False, [])) is None


def test_worker_setup_applies_env_paths_and_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("BASE", "b")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    for k in ("X", "Y", "SKATE_RUNTIME_ENV"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "wd").mkdir()
    worker_setup.apply({
        "env_vars": {"X": "${BASE}/x", "Y": "${MISSING}y"}, "cwd": str(tmp_path / "wd"),
        "sys_path": [str(tmp_path / "wd"), "/m"], "json": '{"env_vars": {}}',
    })
    assert os.environ["X"] == "b/x" and os.environ["Y"] == "y"
    assert os.getcwd() == str(tmp_path / "wd")
    assert sys.path[:2] == [str(tmp_path / "wd"), "/m"]
    assert os.environ["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "wd"), "/m"])
    assert os.environ["SKATE_RUNTIME_ENV"] == '{"env_vars": {}}'
