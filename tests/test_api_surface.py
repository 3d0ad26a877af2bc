"""The public surface of Ray 2.60's core API, as a table; skate must match it.

The table below is written from Ray 2.60's API reference (docs.ray.io, "Ray
Core API": Core API, Tasks, Actors, Objects, Runtime Context, Utility,
Exceptions, Scheduling Strategies).  For every name it gives the signature
Ray documents.  skate's object must accept the same parameters, in the same
order, of the same kinds, with the same defaults; it may add parameters only
after Ray's, keyword-only and with defaults (skate's own extras), and may
give a default where Ray has none.

Where Ray has a name whose feature skate does not implement, skate leaves
the name out rather than offering a stub, and the name is listed in
``KNOWN_GAPS`` with the reason; ``test_known_gaps_are_absent`` checks the
list tells the truth (and prints it).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import skate

# --- the table ----------------------------------------------------------------------------------
# "module:qualname" -> Ray 2.60's documented signature (annotations dropped).

FUNCTIONS = {
    # Core API
    "skate:init": (
        "(address=None, *, num_cpus=None, num_gpus=None, resources=None, labels=None, "
        "object_store_memory=None, local_mode=False, ignore_reinit_error=False, include_dashboard=None, "
        "dashboard_host='127.0.0.1', dashboard_port=None, job_config=None, configure_logging=True, "
        "logging_level='info', logging_format=None, logging_config=None, log_to_driver=None, namespace=None, "
        "runtime_env=None, enable_resource_isolation=False, cgroup_path=None, system_reserved_cpu=None, "
        "system_reserved_memory=None, proxy_server_url=None, **kwargs)"
    ),
    "skate:shutdown": "(*, wait_for_processes=False, _exiting_interpreter=False)",
    "skate:is_initialized": "()",
    # Tasks and actors
    "skate:remote": "(*args, **kwargs)",
    "skate:method": "(*args, **kwargs)",
    "skate:cancel": "(ray_waitable, *, force=False, recursive=True)",
    "skate:get_actor": "(name, namespace=None)",
    "skate:kill": "(actor, *, no_restart=True)",
    # Objects
    "skate:get": "(object_refs, *, timeout=None, _use_object_store=False)",
    "skate:put": "(value, *, _owner=None, _tensor_transport=None)",
    "skate:wait": "(ray_waitables, *, num_returns=1, timeout=None, fetch_local=True)",
    # Runtime context and cluster information
    "skate:get_runtime_context": "()",
    "skate:get_gpu_ids": "()",
    "skate:nodes": "()",
    "skate:cluster_resources": "()",
    "skate:available_resources": "()",
    "skate:timeline": "(filename=None)",
    "skate.runtime_context:get_runtime_context": "()",
    # ray.actor
    "skate.actor:exit_actor": "()",
    "skate.actor:method": "(*args, **kwargs)",
    # ray.runtime_env
    "skate.runtime_env:RuntimeEnv": (
        "(*, py_modules=None, py_executable=None, working_dir=None, pip=None, conda=None, container=None, "
        "env_vars=None, worker_process_setup_hook=None, nsight=None, rocprof_sys=None, config=None, "
        "_validate=True, image_uri=None, uv=None, **kwargs)"
    ),
    "skate.runtime_env:RuntimeEnvConfig": "(setup_timeout_seconds=600, eager_install=True, log_files=None)",
    # ray.util core helpers
    "skate.util:as_completed": "(refs, *, chunk_size=10, yield_obj_refs=False, **kwargs)",
    "skate.util:map_unordered": "(fn, items, *, backpressure_size=100, chunk_size=10, yield_obj_refs=False, **kwargs)",
    "skate.util.scheduling_strategies:NodeAffinitySchedulingStrategy": (
        "(node_id, soft, _spill_on_unavailable=False, _fail_on_unavailable=False)"
    ),
}

# Methods: "module:Class.method" -> signature without ``self``.
METHODS = {
    "skate.remote_function:RemoteFunction.remote": "(*args, **kwargs)",
    "skate.remote_function:RemoteFunction.options": "(**task_options)",
    "skate.remote_function:RemoteFunction.bind": "(*args, **kwargs)",
    "skate.remote_function:RemoteFunction._remote": "(args=None, kwargs=None, serialized_runtime_env_info=None, **task_options)",
    "skate.actor:ActorClass.remote": "(*args, **kwargs)",
    "skate.actor:ActorClass.options": "(**actor_options)",
    "skate.actor:ActorClass.bind": "(*args, **kwargs)",
    "skate.actor:ActorClass._remote": "(args=None, kwargs=None, **actor_options)",
    "skate.actor:ActorMethod.remote": "(*args, **kwargs)",
    "skate.actor:ActorMethod.options": "(**options)",
    "skate.actor:ActorMethod.bind": "(*args, **kwargs)",
    "skate.actor:ActorMethod._remote": (
        "(args=None, kwargs=None, name='', num_returns=None, max_task_retries=None, retry_exceptions=None, "
        "concurrency_group=None, _generator_backpressure_num_objects=None, _num_objects_per_yield=None, "
        "enable_task_events=None, tensor_transport=None, _labels=None)"
    ),
    "skate.object_ref:ObjectRef.binary": "()",
    "skate.object_ref:ObjectRef.hex": "()",
    "skate.object_ref:ObjectRef.task_id": "()",
    "skate.object_ref:ObjectRef.owner_address": "()",
    "skate.object_ref:ObjectRef.is_nil": "()",
    "skate.object_ref:ObjectRef.future": "()",
    "skate.object_ref:ObjectRef.as_future": "(_internal=False)",
    "skate.object_ref:ObjectRef.nil": "()",
    "skate.object_ref:ObjectRef.from_binary": "(id_bytes)",
    "skate.object_ref:ObjectRef.from_hex": "(hex_id)",
    "skate.object_ref:ObjectRef.from_random": "()",
}

# ray.util utilities skate provides in its own modules (skate.util.actor_pool,
# skate.util.queue, skate.util.cluster_info, skate.util.check_serialize): their
# table is checked wherever those modules are present.
UTIL_SIGNATURES = {
    "skate.util:ActorPool": "(actors)",
    "skate.util:list_named_actors": "(all_namespaces=False)",
    "skate.util:get_node_ip_address": "(address=None)",
    "skate.util:inspect_serializability": "(base_obj, name=None, depth=3, print_file=None)",
    "skate.util.queue:Queue": "(maxsize=0, actor_options=None)",
    "skate.util:ActorPool.submit": "(fn, value)",
    "skate.util:ActorPool.map": "(fn, values)",
    "skate.util:ActorPool.map_unordered": "(fn, values)",
    "skate.util:ActorPool.get_next": "(timeout=None, ignore_if_timedout=False)",
    "skate.util:ActorPool.get_next_unordered": "(timeout=None, ignore_if_timedout=False)",
    "skate.util:ActorPool.has_next": "()",
    "skate.util:ActorPool.has_free": "()",
    "skate.util:ActorPool.pop_idle": "()",
    "skate.util:ActorPool.push": "(actor)",
    "skate.util.queue:Queue.put": "(item, block=True, timeout=None)",
    "skate.util.queue:Queue.put_async": "(item, block=True, timeout=None)",
    "skate.util.queue:Queue.get": "(block=True, timeout=None)",
    "skate.util.queue:Queue.get_async": "(block=True, timeout=None)",
    "skate.util.queue:Queue.put_nowait": "(item)",
    "skate.util.queue:Queue.put_nowait_batch": "(items)",
    "skate.util.queue:Queue.get_nowait": "()",
    "skate.util.queue:Queue.get_nowait_batch": "(num_items)",
    "skate.util.queue:Queue.qsize": "()",
    "skate.util.queue:Queue.size": "()",
    "skate.util.queue:Queue.empty": "()",
    "skate.util.queue:Queue.full": "()",
    "skate.util.queue:Queue.shutdown": "(force=False, grace_period_s=5)",
    "skate.util:placement_group": (
        "(bundles, strategy='PACK', name='', lifetime=None, _soft_target_node_id=None, "
        "bundle_label_selector=None, fallback_strategy=None)"
    ),
    "skate.util:remove_placement_group": "(placement_group)",
    "skate.util:get_placement_group": "(placement_group_name)",
    "skate.util:placement_group_table": "(placement_group=None)",
    "skate.util:get_current_placement_group": "()",
    "skate.util.placement_group:PlacementGroup.ready": "()",
    "skate.util.placement_group:PlacementGroup.wait": "(timeout_seconds=30)",
    "skate.util.scheduling_strategies:PlacementGroupSchedulingStrategy": (
        "(placement_group, placement_group_bundle_index=-1, placement_group_capture_child_tasks=None)"
    ),
}


CLASSMETHODS = {"ObjectRef.nil", "ObjectRef.from_binary", "ObjectRef.from_hex", "ObjectRef.from_random"}

# ray.runtime_context.RuntimeContext: methods (no arguments) and properties.
RUNTIME_CONTEXT_METHODS = [
    "get", "get_accelerator_ids", "get_actor_id", "get_actor_name", "get_assigned_resources", "get_job_id",
    "get_node_id", "get_placement_group_id", "get_resource_ids", "get_runtime_env_string", "get_session_name",
    "get_task_function_name", "get_task_id", "get_task_name", "get_temp_dir", "get_worker_id", "is_canceled",
]
RUNTIME_CONTEXT_PROPERTIES = [
    "actor_id", "current_actor", "current_placement_group_id", "gcs_address", "job_id", "namespace", "node_id",
    "runtime_env", "should_capture_child_tasks_in_placement_group", "task_id", "was_current_actor_reconstructed",
]

# Names that must exist (classes, modules, aliases).
NAMES = [
    "skate:ObjectRef", "skate:ObjectRefGenerator", "skate:DynamicObjectRefGenerator", "skate:ObjectID", "skate:ActorID", "skate:JobID", "skate:NodeID", "skate:TaskID",
    "skate:WorkerID", "skate:UniqueID", "skate:PlacementGroupID", "skate:exceptions", "skate:actor", "skate:util", "skate:dag", "skate:runtime_context",
    "skate:error_info",
    "skate.actor:ActorClass", "skate.actor:ActorHandle", "skate.actor:ActorMethod",
    "skate.actor:ActorClassInheritanceException", "skate.remote_function:RemoteFunction",
    "skate.runtime_context:RuntimeContext",
]

# ray.exceptions: class -> its direct bases in Ray 2.60.
EXCEPTIONS = {
    "RayError": ("Exception",),
    "RayTaskError": ("RayError",),
    "RayActorError": ("RayError",),
    "ActorDiedError": ("RayActorError",),
    "ActorUnavailableError": ("RayActorError",),
    "ActorAlreadyExistsError": ("ValueError", "RayError"),
    "ActorHandleNotFoundError": ("ValueError", "RayError"),
    "ActorUnschedulableError": ("RayError",),
    "ActorPlacementGroupRemoved": ("RayError",),
    "AsyncioActorExit": ("RayError",),
    "AuthenticationError": ("RayError",),
    "CrossLanguageError": ("RayError",),
    "GetTimeoutError": ("RayError", "TimeoutError"),
    "LocalRayletDiedError": ("RayError",),
    "NodeDiedError": ("RayError",),
    "ObjectLostError": ("RayError",),
    "ObjectFetchTimedOutError": ("ObjectLostError",),
    "ObjectFreedError": ("ObjectLostError",),
    "ObjectReconstructionFailedError": ("ObjectLostError",),
    "ObjectReconstructionFailedMaxAttemptsExceededError": ("ObjectLostError",),
    "ObjectReconstructionFailedLineageEvictedError": ("ObjectLostError",),
    "ObjectRefStreamEndOfStreamError": ("RayError",),
    "ObjectStoreFullError": ("RayError",),
    "OufOfBandObjectRefSerializationException": ("RayError",),
    "OutOfDiskError": ("RayError",),
    "OutOfMemoryError": ("RayError",),
    "OwnerDiedError": ("ObjectLostError",),
    "PendingCallsLimitExceeded": ("RayError",),
    "PlasmaObjectNotAvailable": ("RayError",),
    "RayCgraphCapacityExceeded": ("RaySystemError",),
    "RayChannelError": ("RaySystemError",),
    "RayChannelTimeoutError": ("RayChannelError", "TimeoutError"),
    "RayDirectTransportError": ("RaySystemError",),
    "RaySystemError": ("RayError",),
    "ReferenceCountingAssertionError": ("ObjectLostError", "AssertionError"),
    "RpcError": ("RayError",),
    "RuntimeEnvSetupError": ("RayError",),
    "StreamingGeneratorReplayInconsistentError": ("RaySystemError",),
    "TaskCancelledError": ("RayError",),
    "TaskPlacementGroupRemoved": ("RayError",),
    "TaskUnschedulableError": ("RayError",),
    "UnserializableException": ("RayError",),
    "UserCodeException": ("RayError",),
    "WorkerCrashedError": ("RayError",),
}

# Exception constructors with the parameters Ray documents.
EXCEPTION_SIGNATURES = {
    "RayTaskError": "(function_name, traceback_str, cause, proctitle=None, pid=None, ip=None, actor_repr=None, actor_id=None)",
    "RayActorError": "(actor_id=None, error_msg='The actor experienced an error before finishing this task.', actor_init_failed=False, preempted=False)",
    "ActorDiedError": "(cause=None)",
    "ActorUnavailableError": "(error_message, actor_id)",
    "ActorAlreadyExistsError": "(error_message)",
    "RaySystemError": "(client_exc, traceback_str=None)",
    "TaskCancelledError": "(task_id=None, error_message=None)",
    "ObjectLostError": "(object_ref_hex, owner_address, call_site)",
    "OwnerDiedError": "(object_ref_hex, owner_address, call_site)",
    "RpcError": "(message, rpc_code=None)",
    "UnserializableException": "(original_stack_trace)",
}

# Defaults skate keeps different from Ray's on purpose (a default where the
# text of Ray's differs but not its meaning).
DEFAULT_DIFFERENCES = {
    # skate's message: "The actor died unexpectedly before finishing this task." when no
    # cause or message is given; the parameter is still optional.
    ("RayActorError", "error_msg"),
    # skate's messages take the task id's hex form; TaskCancelledError's second
    # parameter is called ``message`` in older code, ``error_message`` in Ray.
}

# Option names of @remote / .options() in Ray 2.60, with Ray's defaults.
TASK_OPTIONS = {
    "num_returns": None, "num_cpus": 1, "num_gpus": None, "resources": None, "accelerator_type": None,
    "memory": None, "object_store_memory": None, "max_calls": 0, "max_retries": 3, "retry_exceptions": False,
    "name": None, "runtime_env": None, "scheduling_strategy": None, "placement_group": "default",
    "placement_group_bundle_index": -1, "placement_group_capture_child_tasks": None, "label_selector": None,
    "fallback_strategy": None, "_labels": None, "enable_task_events": True,
    "_generator_backpressure_num_objects": None, "_num_objects_per_yield": 1,
}
ACTOR_OPTIONS = {
    "num_cpus": None, "num_gpus": None, "resources": None, "accelerator_type": None, "memory": None,
    "object_store_memory": None, "max_restarts": 0, "max_task_retries": 0, "max_concurrency": None,
    "max_pending_calls": -1, "name": None, "namespace": None, "lifetime": None, "get_if_exists": False,
    "runtime_env": None, "scheduling_strategy": None, "placement_group": "default",
    "placement_group_bundle_index": -1, "placement_group_capture_child_tasks": None, "concurrency_groups": None,
    "label_selector": None, "fallback_strategy": None, "_labels": None, "enable_task_events": True,
    "allow_out_of_order_execution": None, "enable_tensor_transport": None,
    "_actor_generator_backpressure_num_objects": None,
}
METHOD_OPTIONS = {
    "num_returns": None, "concurrency_group": None, "max_task_retries": None, "retry_exceptions": None,
    "_generator_backpressure_num_objects": None, "_num_objects_per_yield": None, "enable_task_events": None,
    "tensor_transport": None,
}

# Ray names skate leaves out: the feature is not implemented (no stubs).
KNOWN_GAPS = {
    "skate:LoggingConfig": "structured logging configuration (init takes logging_level/logging_format)",
    "skate:ClientBuilder": "Ray Client",
    "skate:client": "Ray Client",
    "skate:FunctionID": "function ids are not exposed",
    "skate:ActorClassID": "actor class ids are not exposed",
    "skate:Language": "cross-language calls",
    "skate:SCRIPT_MODE": "worker modes of Ray's global worker",
    "skate:WORKER_MODE": "worker modes of Ray's global worker",
    "skate:java_function": "cross-language calls",
    "skate:java_actor_class": "cross-language calls",
    "skate:cpp_function": "cross-language calls",
    "skate:job_config": "JobConfig",
    "skate.util:metrics": "custom metrics",
    "skate.util:collective": "collective communication",
    "skate.util:register_serializer": "custom serializers",
    "skate.util:deregister_serializer": "custom serializers",
    "skate.util:connect": "Ray Client",
    "skate.util:disconnect": "Ray Client",
    "skate.util:get_node_instance_id": "cloud instance ids",
    "skate.util.scheduling_strategies:NodeLabelSchedulingStrategy": "node labels",
    "skate.runtime_context:RuntimeContext.get_node_labels": "node labels",
    "skate.object_ref:ObjectRef.job_id": "object ids do not embed the job id",
    "skate.object_ref:ObjectRef.call_site": "call sites are not recorded",
    "skate.object_ref:ObjectRef.size": "ObjectRef.size()",
    "skate.object_ref:ObjectRef.tensor_transport": "tensor transports",
    "skate.object_ref:ObjectRef.redis_shard_hash": "no Redis",
}


# --- helpers ----------------------------------------------------------------------------------------


def _resolve(path: str):
    module, _, qual = path.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = inspect.getattr_static(obj, part) if isinstance(obj, type) else getattr(obj, part)
    return obj


def _ray_params(sig_text: str) -> list[inspect.Parameter]:
    ns: dict = {}
    exec(f"def _f{sig_text}: pass", ns)  # the table's own literals, nothing else
    return list(inspect.signature(ns["_f"]).parameters.values())


def _skate_params(obj, drop_self: bool) -> list[inspect.Parameter]:
    if isinstance(obj, (staticmethod, classmethod)):
        drop_self = isinstance(obj, classmethod)
        obj = obj.__func__
    if isinstance(obj, type):
        obj = obj.__init__
        drop_self = True
    params = list(inspect.signature(obj).parameters.values())
    return params[1:] if drop_self else params


def _mismatches(name: str, ray: list[inspect.Parameter], ours: list[inspect.Parameter], lenient: set) -> list[str]:
    out = []
    for i, rp in enumerate(ray):
        if i >= len(ours):
            out.append(f"{name}: missing parameter {rp}")
            continue
        op = ours[i]
        if op.name != rp.name or op.kind != rp.kind:
            out.append(f"{name}: parameter {i} is {op} (kind {op.kind.name}), Ray's is {rp} (kind {rp.kind.name})")
        elif rp.default is not inspect.Parameter.empty and (name.split(":")[-1], rp.name) not in lenient:
            if op.default is inspect.Parameter.empty or op.default != rp.default:
                out.append(f"{name}: default of {rp.name} is {op.default!r}, Ray's is {rp.default!r}")
    for op in ours[len(ray):]:
        if op.kind is not inspect.Parameter.KEYWORD_ONLY or op.default is inspect.Parameter.empty:
            out.append(f"{name}: extra parameter {op} (extras must be keyword-only with a default)")
    return out


# --- tests ------------------------------------------------------------------------------------------


def test_function_signatures_match_ray():
    bad = []
    for path, sig in FUNCTIONS.items():
        obj = _resolve(path)
        bad += _mismatches(path, _ray_params(sig), _skate_params(obj, drop_self=False), set())
    assert not bad, "\n".join(bad)


def test_method_signatures_match_ray():
    bad = []
    for path, sig in METHODS.items():
        obj = _resolve(path)
        qual = path.partition(":")[2]
        if qual in CLASSMETHODS:
            assert isinstance(obj, classmethod), f"{path} must be a classmethod (like Ray's)"
        bad += _mismatches(path, _ray_params(sig), _skate_params(obj, drop_self=True), set())
    assert not bad, "\n".join(bad)


def test_util_signatures_match_ray_where_present():
    bad, absent = [], []
    for path, sig in UTIL_SIGNATURES.items():
        try:
            obj = _resolve(path)
        except (AttributeError, ImportError):
            absent.append(path)
            continue
        is_method = path.partition(":")[2].count(".") == 1
        bad += _mismatches(path, _ray_params(sig), _skate_params(obj, drop_self=is_method), set())
    assert not bad, "\n".join(bad)
    if absent:
        pytest.skip(f"not in this tree: {absent}")


def test_names_exist():
    missing = []
    for path in NAMES:
        try:
            _resolve(path)
        except (AttributeError, ImportError):
            missing.append(path)
    assert not missing, missing


def test_runtime_context_has_every_ray_accessor():
    from skate.runtime_context import RuntimeContext

    for name in RUNTIME_CONTEXT_METHODS:
        fn = inspect.getattr_static(RuntimeContext, name)
        assert inspect.isfunction(fn), name
        assert list(inspect.signature(fn).parameters) == ["self"], name
    for name in RUNTIME_CONTEXT_PROPERTIES:
        assert isinstance(inspect.getattr_static(RuntimeContext, name), property), name


def test_exception_classes_and_bases_match_ray():
    import builtins

    from skate import exceptions as exc

    bad = []
    for name, bases in EXCEPTIONS.items():
        cls = getattr(exc, name, None)
        if cls is None:
            bad.append(f"missing {name}")
            continue
        for base in bases:
            base_cls = getattr(exc, base, None) or getattr(builtins, base)
            if not issubclass(cls, base_cls):
                bad.append(f"{name} is not a subclass of {base}")
    assert not bad, bad
    from skate.actor import ActorClassInheritanceException

    assert issubclass(ActorClassInheritanceException, TypeError)


def test_exception_constructor_signatures_match_ray():
    from skate import exceptions as exc

    bad = []
    for name, sig in EXCEPTION_SIGNATURES.items():
        bad += _mismatches(name, _ray_params(sig), _skate_params(getattr(exc, name), drop_self=False), DEFAULT_DIFFERENCES)
    assert not bad, "\n".join(bad)


def test_every_ray_option_is_known_with_its_default():
    """Each option Ray 2.60 accepts is accepted by skate at Ray's default value."""

    def f():
        return 1

    class C:
        def m(self):
            return 1

    for name, default in TASK_OPTIONS.items():
        skate.remote(**{name: default})(f)
    for name, default in ACTOR_OPTIONS.items():
        skate.remote(**{name: default})(C)
    for name, default in METHOD_OPTIONS.items():
        skate.method(**{name: default})(C.m)
    from skate._private import options

    assert options.TASK_OPTIONS == set(TASK_OPTIONS)
    # skate's one addition: retry_exceptions for every method of an actor
    # class (Ray takes it per method only).
    assert options.ACTOR_OPTIONS == set(ACTOR_OPTIONS) | {"retry_exceptions"}
    assert options.METHOD_OPTIONS == set(METHOD_OPTIONS)


def test_old_names_from_early_releases_keep_working():
    """``redis_address``, ``num_return_vals``, ``error_info()`` and ``wait(timeout=)``."""
    assert "redis_address" not in inspect.signature(skate.init).parameters  # through **kwargs, like Ray
    from skate._private import init_options

    assert init_options.check(None, {}, {"redis_address": "1.2.3.4:6379"})[0] == "1.2.3.4:6379"
    f = skate.remote(num_return_vals=2)(lambda: (1, 2))
    assert f._options["num_returns"] == 2
    assert callable(skate.error_info)
    assert "timeout" in inspect.signature(skate.wait).parameters


def test_known_gaps_are_absent(capsys):
    """The list of gaps tells the truth: each listed name is really absent."""
    present = []
    for path in KNOWN_GAPS:
        try:
            _resolve(path)
            present.append(path)
        except (AttributeError, ImportError):
            pass
    with capsys.disabled():
        print(f"\nRay 2.60 names skate does not provide yet ({len(KNOWN_GAPS)}):")
        for path, why in sorted(KNOWN_GAPS.items()):
            print(f"  {path:70s} {why}")
    assert not present, f"listed as gaps but present (update the table): {present}"


def test_table_covers_public_names_of_skate():
    """Every public name skate exports is in the table (so the table is the whole surface)."""
    table = {p.split(":")[1].split(".")[0] for p in list(FUNCTIONS) + NAMES if p.startswith("skate:")}
    # skate also exports at top level the classes Ray has in ray.actor / ray.remote_function,
    # and ray.actor.exit_actor.
    extra = set(skate.__all__) - table - {"ActorClass", "ActorHandle", "RemoteFunction", "exit_actor"}
    assert not extra, f"exported but not in the API table: {sorted(extra)}"


@pytest.mark.parametrize("name", ["ActorClass", "ActorHandle", "RemoteFunction"])
def test_skate_only_exports_are_the_documented_classes(name):
    # Ray exposes these under ray.actor / ray.remote_function; skate also at top level.
    assert getattr(skate, name) is _resolve(f"{'skate.actor' if name.startswith('Actor') else 'skate.remote_function'}:{name}")


# --- behaviour of names added for the table ---------------------------------------------------------


def test_object_ref_nil_and_ids():
    nil = skate.ObjectRef.nil()
    assert nil.is_nil() and nil.binary() == b"\0" * 20
    r = skate.ObjectRef.from_random()
    assert not r.is_nil()
    assert skate.ObjectRef.from_hex(r.hex()) == r == skate.ObjectRef.from_binary(r.binary())
    assert skate.ObjectID is skate.ObjectRef


def test_task_id_of_a_ref_is_a_task_id(ray_start):
    @skate.remote
    def tid():
        return skate.get_runtime_context().get_task_id()

    ref = tid.remote()
    assert isinstance(ref.task_id(), skate.TaskID)
    assert ref.task_id().hex() == skate.get(ref)


def test_named_actor_name_in_use_raises_actor_already_exists(ray_start):
    @skate.remote
    class A:
        pass

    A.options(name="taken").remote()
    with pytest.raises(skate.exceptions.ActorAlreadyExistsError) as info:
        A.options(name="taken").remote()
    assert isinstance(info.value, ValueError)


def test_inheriting_from_an_actor_class_raises():
    from skate.actor import ActorClassInheritanceException

    @skate.remote
    class Base:
        pass

    with pytest.raises(ActorClassInheritanceException):

        class Child(Base):  # noqa: F811
            pass


def test_object_ref_from_binary_of_an_owned_object_works(ray_start):
    ref = skate.put("value")
    again = skate.ObjectRef.from_hex(ref.hex())
    assert again == ref
    assert skate.get(again) == "value"
