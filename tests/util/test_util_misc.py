"""list_named_actors, get_node_ip_address and inspect_serializability."""

from __future__ import annotations

import io
import threading

from conftest import wait_for

import skate
from skate.util import get_node_ip_address, inspect_serializability, list_named_actors


@skate.remote
class Named:
    def ping(self) -> bool:
        return True

    def names(self, all_namespaces: bool) -> list:
        return list_named_actors(all_namespaces=all_namespaces)

    def ip(self) -> str:
        return get_node_ip_address()


def test_util_is_reachable_from_the_top_level_module():
    import skate as ray

    assert ray.util.ActorPool is skate.util.actor_pool.ActorPool
    assert set(ray.util.__all__) >= {
        "ActorPool", "list_named_actors", "get_node_ip_address", "inspect_serializability",
    }


def test_every_public_name_exists_once():
    import importlib

    for mod in ("skate.util", "skate.util.queue", "skate.util.multiprocessing", "skate.util.joblib"):
        m = importlib.import_module(mod)
        assert len(m.__all__) == len(set(m.__all__)), mod
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.{name}"


# --- list_named_actors ---------------------------------------------------------------------


def test_list_named_actors_current_namespace(ray_start):
    a = Named.options(name="alpha").remote()
    b = Named.options(name="beta").remote()
    Named.remote()  # unnamed: never listed
    skate.get([a.ping.remote(), b.ping.remote()])
    assert sorted(list_named_actors()) == ["alpha", "beta"]


def test_list_named_actors_all_namespaces(ray_start):
    here = skate.get_runtime_context().namespace
    a = Named.options(name="alpha").remote()
    b = Named.options(name="gamma", namespace="elsewhere").remote()
    skate.get([a.ping.remote(), b.ping.remote()])
    assert list_named_actors() == ["alpha"]
    rows = list_named_actors(all_namespaces=True)
    assert sorted(rows, key=lambda r: r["name"]) == [
        {"name": "alpha", "namespace": here},
        {"name": "gamma", "namespace": "elsewhere"},
    ]


def test_list_named_actors_drops_dead_actors(ray_start):
    a = Named.options(name="short-lived").remote()
    keep = Named.options(name="kept").remote()
    skate.get([a.ping.remote(), keep.ping.remote()])
    skate.kill(a)
    wait_for(lambda: list_named_actors() == ["kept"], 15, what="the killed actor to leave the list")


def test_list_named_actors_from_inside_an_actor(ray_start):
    a = Named.options(name="inner").remote()
    assert skate.get(a.names.remote(False)) == ["inner"]
    assert {"name": "inner", "namespace": skate.get_runtime_context().namespace} in skate.get(
        a.names.remote(True)
    )


# --- get_node_ip_address -------------------------------------------------------------------


def test_get_node_ip_address_connected(ray_start):
    ip = get_node_ip_address()
    assert ip == skate.nodes()[0]["NodeManagerAddress"]
    a = Named.remote()
    assert skate.get(a.ip.remote()) == ip  # a worker on the same node says the same


def test_get_node_ip_address_not_connected():
    assert not skate.is_initialized()
    assert get_node_ip_address("127.0.0.1:53") == "127.0.0.1"
    assert not skate.is_initialized()  # asking does not start a cluster


# --- inspect_serializability ---------------------------------------------------------------

LOCK = threading.Lock()

# Defined in a module that cannot be imported, so cloudpickle ships it by value
# (and its global with it), as it does for functions of a driver script.
_ns: dict = {"__name__": "driver_script_module", "LOCK": LOCK}
exec("def uses_global_lock():\n    return LOCK\n", _ns)
uses_global_lock = _ns["uses_global_lock"]


def test_serializable_object_passes():
    out = io.StringIO()
    ok, failures = inspect_serializability(lambda x: x + 1, name="inc", print_file=out)
    assert ok is True and failures == set()
    assert "Checking Serializability" in out.getvalue()


def test_global_of_a_function_is_blamed():
    out = io.StringIO()
    ok, failures = inspect_serializability(uses_global_lock, name="fn", print_file=out)
    assert ok is False
    [f] = failures
    assert f.obj is LOCK and f.name == "LOCK" and f.parent is uses_global_lock
    assert f.path == ("fn", "LOCK")
    assert "FAIL" in out.getvalue() and "LOCK" in out.getvalue()


def test_nonlocal_of_a_closure_is_blamed():
    lock = threading.Lock()

    def closure():
        return lock

    ok, failures = inspect_serializability(closure, print_file=io.StringIO())
    assert not ok
    assert [(f.name, f.obj) for f in failures] == [("lock", lock)]


def test_member_of_an_object_is_blamed():
    class Holder:
        def __init__(self) -> None:
            self.fine = [1, 2]
            self.bad = threading.Lock()

    h = Holder()
    ok, failures = inspect_serializability(h, name="h", print_file=io.StringIO())
    assert not ok
    [f] = failures
    assert f.name == "bad" and f.obj is h.bad and f.parent is h


def test_depth_zero_blames_the_object_itself():
    ok, failures = inspect_serializability(uses_global_lock, depth=0, print_file=io.StringIO())
    assert not ok
    [f] = failures
    assert f.obj is uses_global_lock and f.parent is None


def test_depth_limits_the_walk():
    class Inner:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    class Outer:
        def __init__(self) -> None:
            self.inner = Inner()

    o = Outer()
    _, deep = inspect_serializability(o, depth=3, print_file=io.StringIO())
    assert [f.name for f in deep] == ["lock"]
    _, shallow = inspect_serializability(o, depth=1, print_file=io.StringIO())
    assert [f.name for f in shallow] == ["inner"]
