"""Options of init, remote, options, get, wait and cancel: validated like Ray, and each
either honoured or rejected with a clear error (never accepted and ignored).

``OPTIONS`` enumerates every option of those entry points (Ray 2.60's names):
each is either ``honoured`` -- naming the test that shows the behaviour -- or
``rejected`` at a value skate does not implement, which must raise
``NotImplementedError``.  The tests below check the enumeration is complete
against the API table and that every claim in it holds.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
from test_api_surface import ACTOR_OPTIONS, METHOD_OPTIONS, TASK_OPTIONS

import skate

H = "honoured"

# entry point -> option -> (H, "module::test") or ("rejected", value that raises)
OPTIONS: dict[str, dict[str, tuple]] = {
    "task": {
        "num_returns": (H, "core_worker.test_tasks::test_num_returns"),
        "num_cpus": (H, "test_runtime_context::test_assigned_resources_of_tasks"),
        "num_gpus": (H, "test_options::test_gpu_and_memory_are_resources"),
        "resources": (H, "test_runtime_context::test_assigned_resources_of_tasks"),
        "memory": (H, "test_options::test_gpu_and_memory_are_resources"),
        "max_calls": (H, "core_worker.test_tasks::test_max_calls_one_uses_a_new_worker_each_time"),
        "max_retries": (H, "core_worker.test_tasks::test_worker_exit_is_retried"),
        "retry_exceptions": (H, "core_worker.test_tasks::test_retry_exceptions"),
        "name": (H, "test_runtime_context::test_task_and_function_names"),
        "scheduling_strategy": (H, "test_cluster_utils::test_node_affinity_both_ways"),
        # skate records no task events, so both values mean the same thing.
        "enable_task_events": (H, "test_options::test_enable_task_events_is_accepted_either_way"),
        "accelerator_type": ("rejected", "A100"),
        "object_store_memory": ("rejected", 1024),
        "runtime_env": (H, "runtime_env.test_runtime_env::test_env_vars_job_and_task_merge_like_ray"),
        "placement_group": (H, "util.test_placement_group::test_tasks_and_actors_run_in_their_bundle"),
        "placement_group_bundle_index": (H, "util.test_placement_group::test_tasks_and_actors_run_in_their_bundle"),
        "placement_group_capture_child_tasks": (H, "util.test_placement_group::test_capture_child_tasks"),
        "label_selector": ("rejected", {"zone": "a"}),
        "fallback_strategy": ("rejected", [{"label_selector": {"zone": "b"}}]),
        "_labels": ("rejected", {"a": "b"}),
        "_generator_backpressure_num_objects": (H, "core_worker.test_generators::test_backpressure_keeps_the_producer_close_to_the_consumer"),
        "_num_objects_per_yield": ("rejected", 2),
    },
    "actor": {
        "num_cpus": (H, "test_runtime_context::test_assigned_resources_of_actors"),
        "num_gpus": (H, "test_options::test_gpu_and_memory_are_resources"),
        "resources": (H, "test_runtime_context::test_assigned_resources_of_actors"),
        "memory": (H, "test_options::test_gpu_and_memory_are_resources"),
        "max_concurrency": (H, "test_actor::test_threaded_actor_max_concurrency"),
        "name": (H, "test_actor::test_named_actor_get_actor"),
        "namespace": (H, "test_actor::test_named_actor_namespaces"),
        "lifetime": (H, "test_options::test_detached_actor_needs_a_name"),
        "get_if_exists": (H, "test_actor::test_named_actor_get_if_exists"),
        "scheduling_strategy": (H, "test_cluster_utils::test_node_affinity_both_ways"),
        "enable_task_events": (H, "test_options::test_enable_task_events_is_accepted_either_way"),
        "max_restarts": (H, "actors.test_actor_restart::test_os_exit_restarts_until_max_restarts_then_dies"),
        "max_task_retries": (H, "actors.test_actor_restart::test_retry_exceptions_per_class_and_per_method"),
        "max_pending_calls": (H, "actors.test_actor_class::test_max_pending_calls_raises_pending_calls_limit_exceeded"),
        "concurrency_groups": (H, "actors.test_actor_concurrency::test_threaded_groups_do_not_block_each_other"),
        "allow_out_of_order_execution": (H, "actors.test_actor_concurrency::test_out_of_order_calls_do_not_wait_for_earlier_arguments"),
        "enable_tensor_transport": ("rejected", True),
        "_actor_generator_backpressure_num_objects": (H, "actors.test_actor_generators::test_backpressure_on_an_actor_method"),
        "accelerator_type": ("rejected", "A100"),
        "object_store_memory": ("rejected", 1024),
        "runtime_env": (H, "runtime_env.test_runtime_env::test_actor_runtime_env_and_nested_tasks_inherit"),
        "placement_group": (H, "util.test_placement_group::test_tasks_and_actors_run_in_their_bundle"),
        "placement_group_bundle_index": (H, "util.test_placement_group::test_tasks_and_actors_run_in_their_bundle"),
        "placement_group_capture_child_tasks": (H, "util.test_placement_group::test_capture_child_tasks"),
        "label_selector": ("rejected", {"zone": "a"}),
        "fallback_strategy": ("rejected", [{"label_selector": {"zone": "b"}}]),
        "_labels": ("rejected", {"a": "b"}),
    },
    "method": {
        "num_returns": (H, "test_actor::test_method_decorator_num_returns"),
        "enable_task_events": (H, "test_options::test_enable_task_events_is_accepted_either_way"),
        "concurrency_group": (H, "actors.test_actor_concurrency::test_call_options_pick_the_group"),
        "max_task_retries": (H, "actors.test_actor_restart::test_retry_exceptions_per_class_and_per_method"),
        "retry_exceptions": (H, "actors.test_actor_restart::test_retry_exceptions_per_class_and_per_method"),
        "_generator_backpressure_num_objects": (H, "actors.test_actor_generators::test_backpressure_on_an_actor_method"),
        "_num_objects_per_yield": ("rejected", 2),
        "tensor_transport": ("rejected", "nccl"),
    },
    "init": {
        "address": (H, "test_public_api::test_connect_by_address"),
        "num_cpus": (H, "test_public_api::test_cluster_and_available_resources"),
        "num_gpus": (H, "test_options::test_init_num_gpus_and_resources"),
        "resources": (H, "test_public_api::test_custom_resources_are_reported"),
        "object_store_memory": (H, "core_worker.test_objects::test_memory_does_not_grow_when_objects_are_dropped"),
        "ignore_reinit_error": (H, "test_options::test_init_ignore_reinit_error"),
        "configure_logging": (H, "test_options::test_init_logging_level_and_format"),
        "logging_level": (H, "test_options::test_init_logging_level_and_format"),
        "logging_format": (H, "test_options::test_init_logging_level_and_format"),
        "log_to_driver": (H, "test_failures::test_log_to_driver_false_suppresses_output"),
        "namespace": (H, "test_options::test_init_namespace"),
        "labels": ("rejected", {"zone": "a"}),
        "local_mode": ("rejected", True),
        "include_dashboard": (H, "dashboard.test_dashboard::test_include_dashboard_false_starts_no_dashboard"),
        "dashboard_host": (H, "dashboard.test_dashboard::test_dashboard_host_and_port"),
        "dashboard_port": (H, "dashboard.test_dashboard::test_dashboard_host_and_port"),
        "job_config": ("rejected", object()),
        "logging_config": ("rejected", object()),
        "runtime_env": (H, "runtime_env.test_runtime_env::test_job_working_dir_reaches_every_task_and_actor"),
        "enable_resource_isolation": ("rejected", True),
        "cgroup_path": ("rejected", "/sys/fs/cgroup/x"),
        "system_reserved_cpu": ("rejected", 1.0),
        "system_reserved_memory": ("rejected", 1 << 30),
        "proxy_server_url": ("rejected", "http://proxy"),
        # **kwargs
        "redis_address": (H, "test_public_api::test_legacy_redis_address"),
        "_system_config": ("rejected", {"object_spilling_threshold": 0.9}),
        "_temp_dir": ("rejected", "/tmp/elsewhere"),
        "node_ip_address": ("rejected", "10.0.0.1"),
        "num_redis_shards": ("rejected", 2),
        "huge_pages": ("rejected", True),
        "include_webui": ("rejected", True),
    },
    "get": {
        "timeout": (H, "core_worker.test_tasks::test_get_timeout"),
        "_use_object_store": (H, "test_options::test_get_use_object_store"),
    },
    "put": {
        "_owner": ("rejected", "some-actor"),
        "_tensor_transport": ("rejected", "nccl"),
    },
    "wait": {
        "num_returns": (H, "test_options::test_wait_keywords"),
        "timeout": (H, "test_options::test_wait_keywords"),
        "fetch_local": (H, "test_options::test_wait_fetch_local_pulls_remote_values"),
    },
    "cancel": {
        "force": (H, "core_worker.test_tasks::test_cancel_running_task"),
        "recursive": (H, "test_options::test_cancel_recursive_reaches_children"),
    },
}

_ENTRY = {
    "init": skate.init, "get": skate.get, "put": skate.put, "wait": skate.wait, "cancel": skate.cancel,
}


def test_enumeration_covers_every_option():
    assert set(OPTIONS["task"]) == set(TASK_OPTIONS)
    assert set(OPTIONS["actor"]) == set(ACTOR_OPTIONS)
    assert set(OPTIONS["method"]) == set(METHOD_OPTIONS)
    for entry, fn in _ENTRY.items():
        params = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is not p.VAR_KEYWORD}
        first = next(iter(inspect.signature(fn).parameters))
        assert params - {first} <= set(OPTIONS[entry]) | {"_exiting_interpreter"}, (entry, params - set(OPTIONS[entry]))


def test_every_honoured_option_names_a_test_that_exists():
    for entry, table in OPTIONS.items():
        for name, (kind, ref) in table.items():
            if kind != H:
                continue
            module, _, test = ref.partition("::")
            mod = importlib.import_module(module)
            assert callable(getattr(mod, test, None)), f"{entry}.{name}: no test {ref}"


@pytest.mark.parametrize(
    "entry,name,value",
    [(e, n, v[1]) for e in ("task", "actor", "method") for n, v in OPTIONS[e].items() if v[0] == "rejected"],
)
def test_unsupported_option_values_raise(entry, name, value):
    def f():
        return 1

    class C:
        def m(self):
            return 1

    with pytest.raises(NotImplementedError, match=name):
        if entry == "task":
            skate.remote(**{name: value})(f)
        elif entry == "actor":
            skate.remote(**{name: value})(C)
        else:
            skate.method(**{name: value})(C.m)
    if entry in ("task", "actor"):  # .options() too
        rf = skate.remote(f if entry == "task" else C)
        with pytest.raises(NotImplementedError, match=name):
            rf.options(**{name: value})


@pytest.mark.parametrize("name,value", [(n, v[1]) for n, v in OPTIONS["init"].items() if v[0] == "rejected"])
def test_unsupported_init_keywords_raise_before_starting_anything(name, value):
    with pytest.raises(NotImplementedError, match=name):
        skate.init(**{name: value})
    assert not skate.is_initialized()


def test_put_options_are_rejected(ray_start):
    for name, (_, value) in OPTIONS["put"].items():
        with pytest.raises(NotImplementedError, match=name):
            skate.put(1, **{name: value})


def test_unknown_init_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="not_a_keyword"):
        skate.init(not_a_keyword=1)


def test_runtime_env_fields_skate_lacks_are_never_silently_ignored(ray_start):
    @skate.remote
    def f():
        return 1

    with pytest.raises(NotImplementedError, match="runtime_env field 'pip'"):
        f.options(runtime_env={"pip": ["requests"]}).remote()
    with pytest.raises(NotImplementedError, match="runtime_env field 'conda'"):
        f._remote(runtime_env={"conda": "myenv"})
    with pytest.raises(NotImplementedError, match="serialized_runtime_env_info"):
        f._remote(serialized_runtime_env_info="{}")
    # An empty one asks for nothing.
    assert skate.get(f.options(runtime_env={}).remote()) == 1


# --- validation like Ray ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,error,gist",
    [
        ({"foo": 1}, ValueError, "Invalid option keyword foo"),
        ({"num_cpus": -1}, ValueError, "cannot be negative"),
        ({"num_cpus": "a"}, TypeError, "num_cpus"),
        ({"num_gpus": -1}, ValueError, "cannot be negative"),
        ({"memory": -1}, ValueError, "cannot be negative"),
        ({"num_returns": -1}, ValueError, "num_returns"),
        ({"max_retries": -2}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"resources": {"CPU": 1}}, ValueError, "num_cpus"),
        ({"resources": [1]}, TypeError, "resources"),
        ({"resources": {"a": -1}}, ValueError, "cannot be negative"),
        ({"retry_exceptions": "x"}, TypeError, "retry_exceptions"),
        ({"retry_exceptions": [1]}, ValueError, "retry_exceptions"),
        ({"max_calls": -1}, ValueError, "max_calls"),
        ({"name": 1}, TypeError, "name"),
        ({"scheduling_strategy": "bogus"}, ValueError, "scheduling_strategy"),
        ({"enable_task_events": "x"}, TypeError, "enable_task_events"),
        ({"max_concurrency": 2}, ValueError, "Invalid option keyword max_concurrency"),
    ],
)
def test_task_option_validation_like_ray(options, error, gist):
    with pytest.raises(error, match=gist):
        skate.remote(**options)(lambda: 1)


@pytest.mark.parametrize(
    "options,error,gist",
    [
        ({"foo": 1}, ValueError, "Invalid option keyword foo for actors"),
        ({"num_returns": 1}, ValueError, "Invalid option keyword num_returns"),
        ({"max_concurrency": 1.5}, TypeError, "max_concurrency"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_restarts": -2}, ValueError, "max_restarts"),
        ({"lifetime": "x"}, ValueError, "lifetime"),
        ({"namespace": 1}, TypeError, "namespace"),
        ({"get_if_exists": 1}, TypeError, "get_if_exists"),
        ({"get_if_exists": True}, ValueError, "name must be specified"),
        ({"concurrency_groups": 1}, TypeError, "concurrency_groups"),
    ],
)
def test_actor_option_validation_like_ray(options, error, gist):
    class C:
        pass

    with pytest.raises(error, match=gist):
        skate.remote(**options)(C)


def test_max_calls_cannot_be_set_in_options_like_ray():
    f = skate.remote(lambda: 1)
    with pytest.raises(ValueError, match="max_calls"):
        f.options(max_calls=1)


def test_method_options_validation():
    with pytest.raises(ValueError, match="Invalid option keyword bogus"):
        skate.method(bogus=1)
    with pytest.raises(ValueError, match="num_returns"):
        skate.method(num_returns=-1)


def test_node_affinity_private_flags_are_rejected():
    from skate.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    with pytest.raises(NotImplementedError):
        NodeAffinitySchedulingStrategy("ab", soft=True, _spill_on_unavailable=True)
    with pytest.raises(NotImplementedError):
        NodeAffinitySchedulingStrategy("ab", soft=False, _fail_on_unavailable=True)


# --- honoured options without a test elsewhere --------------------------------------------------------


def test_gpu_and_memory_are_resources():
    skate.init(num_cpus=2, num_gpus=1, _memory=1 << 30)
    try:

        @skate.remote(num_gpus=1, memory=1 << 20)
        class A:
            def res(self):
                return skate.get_runtime_context().get_assigned_resources()

        @skate.remote(num_gpus=0.5, memory=1 << 20)
        def f():
            return skate.get_runtime_context().get_assigned_resources()

        a = A.remote()
        assert skate.get(a.res.remote()) == {"GPU": 1.0, "memory": float(1 << 20)}
        # The actor holds the only GPU: a task needing part of one waits until it is gone.
        ref = f.remote()
        ready, _ = skate.wait([ref], timeout=0.5)
        assert ready == []
        skate.kill(a)
        assert skate.get(ref, timeout=60) == {"CPU": 1.0, "GPU": 0.5, "memory": float(1 << 20)}
    finally:
        skate.shutdown()


def test_enable_task_events_is_accepted_either_way(ray_start):
    @skate.remote(enable_task_events=False)
    def f():
        return 1

    assert skate.get(f.remote()) == 1
    assert skate.get(f.options(enable_task_events=True).remote()) == 1


def test_detached_actor_needs_a_name(ray_start):
    class C:
        def ping(self):
            return "pong"

    with pytest.raises(ValueError, match="name"):
        skate.remote(lifetime="detached")(C).remote()
    a = skate.remote(C).options(lifetime="non_detached").remote()
    assert skate.get(a.ping.remote()) == "pong"


def test_init_num_gpus_and_resources():
    skate.init(num_cpus=1, num_gpus=2, resources={"disk": 3})
    try:
        res = skate.cluster_resources()
        assert res["GPU"] == 2 and res["disk"] == 3
    finally:
        skate.shutdown()


def test_init_ignore_reinit_error(ray_start):
    with pytest.raises(RuntimeError, match="already"):
        skate.init()
    ctx = skate.init(ignore_reinit_error=True)
    assert ctx.get_node_id() == skate.get_runtime_context().get_node_id()


def test_init_logging_level_and_format():
    import logging

    skate.init(num_cpus=1, logging_level="warning", logging_format="LOGFMT %(message)s")
    try:
        logger = logging.getLogger("skate")
        assert logger.level == logging.WARNING
        handlers = [h for h in logger.handlers if h.get_name() == "skate-init"]
        assert len(handlers) == 1
        assert handlers[0].formatter._fmt == "LOGFMT %(message)s"
    finally:
        skate.shutdown()
    skate.init(num_cpus=1, configure_logging=False, logging_level="debug")
    try:
        assert logging.getLogger("skate").level == logging.WARNING  # left alone
    finally:
        skate.shutdown()


def test_init_namespace():
    skate.init(num_cpus=1, namespace="ns-x")
    try:
        assert skate.get_runtime_context().namespace == "ns-x"

        @skate.remote
        class A:
            pass

        a = A.options(name="in-x").remote()
        assert skate.get_actor("in-x") == a  # looked up in the job's namespace
        assert skate.get_actor("in-x", namespace="ns-x") == a
    finally:
        skate.shutdown()


def test_get_use_object_store(ray_start):
    ref = skate.put(5)
    assert skate.get(ref, _use_object_store=True) == 5


def test_wait_keywords(ray_start):
    """Ray 2.60's keyword names: ``wait(ray_waitables=...)`` and ``cancel(ray_waitable=...)``."""
    refs = [skate.put(i) for i in range(3)]
    ready, rest = skate.wait(ray_waitables=refs, num_returns=2, timeout=10)
    assert ready == refs[:2] and rest == refs[2:]
    assert skate.wait([]) == ([], [])
    assert skate.wait([], num_returns=1, timeout=0) == ([], [])

    @skate.remote
    def slow():
        import time

        time.sleep(30)

    ref = slow.remote()
    ready, rest = skate.wait([ref], timeout=0.2)
    assert ready == [] and rest == [ref]
    skate.cancel(ray_waitable=ref, force=True)
    with pytest.raises((skate.exceptions.TaskCancelledError, skate.exceptions.WorkerCrashedError)):
        skate.get(ref, timeout=30)


@pytest.mark.timeout(120)
def test_wait_fetch_local_pulls_remote_values(cluster):
    """A ready value on another node: fetch_local=False leaves it there, the default
    copies it to this node's store before wait returns."""
    cluster.add_node(num_cpus=1, resources={"other": 1})
    skate.init(address=cluster.address)
    try:

        @skate.remote(resources={"other": 1}, num_cpus=0)
        def big(i):
            return np.full(300_000, i, dtype=np.uint8)  # over the inline limit: shared memory

        core = skate._private.runtime.current()

        def local_objects() -> int:
            return core.request(core.raylet, "node_stats")["store"]["objects"]

        before = local_objects()
        a, b = big.remote(1), big.remote(2)
        ready, _ = skate.wait([a], fetch_local=False, timeout=60)
        assert ready == [a]
        assert local_objects() == before
        ready, _ = skate.wait([b], timeout=60)
        assert ready == [b]
        assert local_objects() == before + 1
        assert int(skate.get(b)[0]) == 2
    finally:
        skate.shutdown()


@pytest.mark.timeout(120)
def test_cancel_recursive_reaches_children(ray_start_4cpu, tmp_path):
    """``recursive=True`` (the default) cancels the tasks the cancelled task submitted;
    ``recursive=False`` leaves them running."""
    from conftest import wait_for

    @skate.remote
    def child(marker, out):
        import os
        import time

        open(marker, "w").close()
        try:
            while os.path.exists(marker):
                time.sleep(0.01)
            with open(out + ".tmp", "w") as f:
                f.write("finished")
        except KeyboardInterrupt:
            with open(out + ".tmp", "w") as f:
                f.write("interrupted")
            raise
        finally:
            os.replace(out + ".tmp", out)

    @skate.remote
    def parent(marker, out):
        return skate.get(child.remote(marker, out))

    for recursive in (True, False):
        marker, out = tmp_path / f"running-{recursive}", tmp_path / f"out-{recursive}"
        p = parent.remote(str(marker), str(out))
        wait_for(marker.exists, 30, what="the child to start")
        skate.cancel(p, recursive=recursive)
        with pytest.raises(skate.exceptions.TaskCancelledError):
            skate.get(p, timeout=30)
        if recursive:
            wait_for(out.exists, 30, what="the child to be interrupted")
            assert out.read_text() == "interrupted"
        else:
            assert not out.exists()  # still looping
            marker.unlink()
            wait_for(out.exists, 30, what="the child to finish")
            assert out.read_text() == "finished"


def test_node_options_are_rejected_when_connecting(cluster):
    """Options describing the local node cannot apply to a cluster that already runs."""
    for kw in ({"object_store_memory": 1 << 26}, {"_memory": 1 << 20}, {"num_gpus": 1}):
        with pytest.raises(ValueError, match="skate start"):
            skate.init(address=cluster.address, **kw)
        assert not skate.is_initialized()
