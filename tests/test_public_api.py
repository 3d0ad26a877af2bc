"""The public surface: exported names, Ray's exception names, init/shutdown and
cluster information."""

from __future__ import annotations

import ast
import inspect
import os

import pytest

import skate
from skate import exceptions as exc

RAY_EXCEPTIONS = [
    "RayError",
    "RayTaskError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "GetTimeoutError",
    "TaskCancelledError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "RaySystemError",
    "RayChannelError",
    "RayChannelTimeoutError",
]

RAY_TOP_LEVEL = [
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "get",
    "put",
    "wait",
    "cancel",
    "kill",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "nodes",
    "cluster_resources",
    "available_resources",
    "method",
    "ObjectRef",
    "exceptions",
]


# --- names -----------------------------------------------------------------------------------


def test_all_names_exist_and_are_unique():
    assert len(skate.__all__) == len(set(skate.__all__)), [
        n for n in skate.__all__ if skate.__all__.count(n) > 1
    ]
    for name in skate.__all__:
        assert hasattr(skate, name), name
    ns: dict = {}
    exec("from skate import *", ns)
    assert set(skate.__all__) <= set(ns)


def test_all_is_a_literal_list_without_duplicates():
    # A name listed twice in the source is a mistake even if a set hides it.
    src = inspect.getsource(skate)
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names = [elt.value for elt in node.value.elts]
            assert len(names) == len(set(names))
            break
    else:
        pytest.fail("skate/__init__.py has no literal __all__")


def test_ray_top_level_names():
    for name in RAY_TOP_LEVEL:
        assert hasattr(skate, name), name
        assert name in skate.__all__, name
    assert callable(skate.remote)
    assert isinstance(skate.__version__, str)


def test_ray_exception_names():
    for name in RAY_EXCEPTIONS:
        cls = getattr(exc, name, None)
        assert inspect.isclass(cls) and issubclass(cls, Exception), name
        assert issubclass(cls, exc.RayError), name
        assert name in exc.__all__, name
    assert len(exc.__all__) == len(set(exc.__all__))


def test_exception_hierarchy():
    assert issubclass(exc.ActorDiedError, exc.RayActorError)
    assert issubclass(exc.ActorUnavailableError, exc.RayActorError)
    assert issubclass(exc.OwnerDiedError, exc.ObjectLostError)
    assert issubclass(exc.GetTimeoutError, TimeoutError)
    assert issubclass(exc.RayChannelTimeoutError, exc.RayChannelError)
    assert issubclass(exc.RayChannelTimeoutError, TimeoutError)
    assert issubclass(exc.RayChannelError, exc.RaySystemError)
    # Constructible without arguments, with a useful message.
    for name in RAY_EXCEPTIONS:
        if name == "RayTaskError":
            continue
        e = getattr(exc, name)()
        str(e)


def test_exceptions_survive_pickling():
    # Errors travel between processes pickled: the message and fields must not change.
    import pickle

    samples = [
        exc.TaskCancelledError("ab12"),
        exc.ObjectLostError("cd34"),
        exc.OwnerDiedError("ef56"),
        exc.WorkerCrashedError("the worker died: it exited with code 1."),
        exc.ActorDiedError(actor_id="a1", error_msg="the actor died"),
        exc.GetTimeoutError("get() timed out"),
        exc.ObjectStoreFullError("full"),
        exc.RaySystemError("system"),
    ]
    for name in RAY_EXCEPTIONS:
        if name != "RayTaskError":
            samples.append(getattr(exc, name)())
    for e in samples:
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is type(e)
        assert str(again) == str(e), type(e).__name__
        assert again.args == e.args, type(e).__name__
    assert pickle.loads(pickle.dumps(exc.TaskCancelledError("ab12"))).task_id == "ab12"
    assert pickle.loads(pickle.dumps(exc.ObjectLostError("cd34"))).object_ref_hex == "cd34"
    assert pickle.loads(pickle.dumps(exc.ActorDiedError(actor_id="a1"))).actor_id == "a1"


def test_task_error_as_instance_of_cause():
    cause = KeyError("k")
    err = exc.RayTaskError("fn", "Traceback (most recent call last):\n  boom", cause)
    dual = err.as_instanceof_cause()
    assert isinstance(dual, exc.RayTaskError) and isinstance(dual, KeyError)
    assert "fn" in str(dual) and "boom" in str(dual)
    import pickle

    again = pickle.loads(pickle.dumps(dual))
    assert isinstance(again, KeyError) and isinstance(again, exc.RayTaskError)


def test_api_before_init_starts_a_local_cluster():
    # Like Ray: the first put/get/remote without init() starts a local cluster.
    assert not skate.is_initialized()
    try:
        ref = skate.put(1)
        assert skate.is_initialized()
        assert skate.get(ref) == 1
    finally:
        skate.shutdown()
    assert not skate.is_initialized()


# --- init / shutdown ----------------------------------------------------------------------------


def test_init_shutdown_is_initialized():
    assert not skate.is_initialized()
    ctx = skate.init(num_cpus=1)
    try:
        assert skate.is_initialized()
        assert ctx is not None
        assert skate.get(skate.put("x")) == "x"
    finally:
        skate.shutdown()
    assert not skate.is_initialized()
    skate.shutdown()  # a second shutdown is harmless
    assert not skate.is_initialized()


def test_init_again_after_shutdown():
    for i in range(2):
        skate.init(num_cpus=1)
        try:
            assert skate.get(skate.put(i)) == i
        finally:
            skate.shutdown()


def test_init_twice(ray_start):
    with pytest.raises(RuntimeError):
        skate.init(num_cpus=1)
    assert skate.is_initialized()
    skate.init(ignore_reinit_error=True)
    assert skate.is_initialized()
    assert skate.cluster_resources()["CPU"] == 2  # still the first cluster


def test_init_rejects_unknown_arguments():
    with pytest.raises(TypeError):
        skate.init(num_cpus=1, not_an_argument=True)
    assert not skate.is_initialized()


def test_init_rejects_negative_cpus():
    with pytest.raises(ValueError):
        skate.init(num_cpus=-1)
    assert not skate.is_initialized()


def test_connect_by_address(cluster):
    skate.init(address=cluster.address)
    try:
        assert skate.is_initialized()
        assert skate.cluster_resources()["CPU"] == 1

        @skate.remote
        def f():
            return os.getpid()

        assert skate.get(f.remote(), timeout=60) != os.getpid()
    finally:
        skate.shutdown()


def test_legacy_redis_address(cluster):
    skate.init(redis_address=cluster.address)
    try:
        assert skate.is_initialized()
        assert skate.cluster_resources()["CPU"] == 1
    finally:
        skate.shutdown()


def test_connecting_with_node_resources_is_rejected(cluster):
    with pytest.raises(ValueError):
        skate.init(address=cluster.address, num_cpus=4)
    assert not skate.is_initialized()


def test_connect_to_nothing_fails():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError):
        skate.init(address=f"127.0.0.1:{port}", _token="00" * 8)
    assert not skate.is_initialized()


# --- cluster information ------------------------------------------------------------------------


def test_cluster_and_available_resources(ray_start):
    total = skate.cluster_resources()
    assert total["CPU"] == 2.0
    assert total["object_store_memory"] > 0
    assert all(isinstance(v, float) for v in total.values())
    assert any(k.startswith("node:") for k in total)
    avail = skate.available_resources()
    assert set(avail) <= set(total)
    for k, v in avail.items():
        assert 0 <= v <= total[k]


def test_custom_resources_are_reported():
    skate.init(num_cpus=1, num_gpus=0, resources={"widget": 3})
    try:
        total = skate.cluster_resources()
        assert total["widget"] == 3.0
        assert total["CPU"] == 1.0
        assert "GPU" not in total
    finally:
        skate.shutdown()


def test_nodes_shape(ray_start):
    nodes = skate.nodes()
    assert isinstance(nodes, list) and len(nodes) == 1
    n = nodes[0]
    for key in ("NodeID", "Alive", "NodeManagerAddress", "Resources"):
        assert key in n, key
    assert n["Alive"] is True
    assert isinstance(n["NodeID"], str) and len(n["NodeID"]) == 32
    int(n["NodeID"], 16)
    assert n["Resources"]["CPU"] == 2.0
    assert n["NodeID"] == skate.get_runtime_context().get_node_id()


def test_runtime_context_in_driver(ray_start):
    ctx = skate.get_runtime_context()
    assert isinstance(ctx.get_job_id(), str) and ctx.get_job_id()
    assert isinstance(ctx.get_node_id(), str) and len(ctx.get_node_id()) == 32
    assert ctx.get_actor_id() is None
    assert ctx.namespace


def test_get_gpu_ids_in_driver(ray_start):
    assert skate.get_gpu_ids() == [] or all(isinstance(g, (int, str)) for g in skate.get_gpu_ids())


def test_remote_decorator_forms(ray_start):
    @skate.remote
    def a():
        return "a"

    @skate.remote(num_cpus=1)
    def b():
        return "b"

    def plain():
        return "c"

    c = skate.remote(plain)
    assert isinstance(a, skate.RemoteFunction)
    assert skate.get([a.remote(), b.remote(), c.remote()]) == ["a", "b", "c"]
    with pytest.raises(TypeError):
        skate.remote(42)

    @skate.remote
    class K:
        def v(self):
            return "k"

    assert isinstance(K, skate.ActorClass)
    handle = K.remote()
    assert isinstance(handle, skate.ActorHandle)
    assert skate.get(handle.v.remote()) == "k"
