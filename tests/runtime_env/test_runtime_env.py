"""runtime_env on a real cluster: env_vars, working_dir, py_modules, excludes, config;
job, task and actor levels merged like Ray; workers pooled per environment."""

from __future__ import annotations

import os
import sys

import pytest

import skate
from skate._private.runtime_env import packaging


def write(root, rel: str, text: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@skate.remote
def env(*names):
    return {n: os.environ.get(n) for n in names}


@skate.remote
def pid():
    return os.getpid()


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    write(root, "renv_wd_mod.py", "VALUE = 'from working_dir'\n")
    write(root, "data/input.txt", "payload")
    write(root, "logs/big.log", "x" * 1000)
    write(root, "secret.key", "k")
    return root


def _packages() -> list:
    from skate._private import runtime

    return runtime.current().gcs_call("kv_keys", [packaging.KV_NAMESPACE, ""])


@pytest.fixture
def clean_modules():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("renv_"):
            del sys.modules[name]


def test_env_vars_job_and_task_merge_like_ray():
    skate.init(num_cpus=2, runtime_env={"env_vars": {"JOB_ONLY": "j", "BOTH": "job"}})
    try:
        assert skate.get(env.remote("JOB_ONLY", "BOTH")) == {"JOB_ONLY": "j", "BOTH": "job"}
        # The task's env_vars are merged over the job's, key by key.
        got = skate.get(env.options(runtime_env={"env_vars": {"BOTH": "task", "T": "t"}}).remote("JOB_ONLY", "BOTH", "T"))
        assert got == {"JOB_ONLY": "j", "BOTH": "task", "T": "t"}
        # The driver itself is not changed (like Ray).
        assert os.environ.get("JOB_ONLY") is None
        ctx = skate.get_runtime_context()
        assert ctx.runtime_env == {"env_vars": {"JOB_ONLY": "j", "BOTH": "job"}}
        assert '"JOB_ONLY": "j"' in ctx.get_runtime_env_string()
    finally:
        skate.shutdown()


def test_env_var_references_expand_to_the_workers_value(ray_start):
    got = skate.get(env.options(runtime_env={"env_vars": {"P": "${SKATE_NODE_ID}:extra", "Q": "${NOT_SET_ANYWHERE}x"}}).remote("P", "Q", "SKATE_NODE_ID"))
    assert got["P"] == got["SKATE_NODE_ID"] + ":extra"
    assert got["Q"] == "x"


def test_actor_runtime_env_and_nested_tasks_inherit(ray_start):
    @skate.remote
    class A:
        def read(self):
            return os.environ.get("WHO"), skate.get_runtime_context().runtime_env

        def nested(self):
            # A task submitted from here runs in this actor's environment, merged with its own.
            return skate.get(env.options(runtime_env={"env_vars": {"EXTRA": "1"}}).remote("WHO", "EXTRA"))

    a = A.options(runtime_env={"env_vars": {"WHO": "actor"}}).remote()
    who, renv = skate.get(a.read.remote())
    assert who == "actor" and renv == {"env_vars": {"WHO": "actor"}}
    assert skate.get(a.nested.remote()) == {"WHO": "actor", "EXTRA": "1"}


def test_working_dir_is_cwd_and_importable_and_excludes_apply(ray_start, project, clean_modules):
    @skate.remote
    def look():
        import renv_wd_mod

        return (
            renv_wd_mod.VALUE,
            open("data/input.txt").read(),
            os.path.exists("logs"),
            os.path.exists("secret.key"),
            os.getcwd(),
            skate.get_runtime_context().runtime_env["working_dir"],
        )

    renv = {"working_dir": str(project), "excludes": ["logs/", "*.key"]}
    value, data, has_logs, has_key, cwd, uri = skate.get(look.options(runtime_env=renv).remote())
    assert (value, data, has_logs, has_key) == ("from working_dir", "payload", False, False)
    assert packaging.is_package_uri(uri)
    assert os.path.basename(cwd) == uri[len("gcs://"):-len(".zip")]
    assert cwd != str(project)  # an unpacked copy, not the driver's folder
    assert _packages() == [uri]
    # The same files again: the same package, not uploaded twice.
    assert skate.get(look.options(runtime_env=dict(renv)).remote())[5] == uri
    assert _packages() == [uri]


def test_working_dir_from_a_zip_with_one_top_folder(ray_start, tmp_path):
    import zipfile

    z = tmp_path / "wd.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("top/hello.txt", "hi from zip")

    @skate.remote
    def read():
        return open("hello.txt").read(), os.path.basename(os.getcwd())

    assert skate.get(read.options(runtime_env={"working_dir": str(z)}).remote()) == ("hi from zip", "top")


def test_py_modules_folders_files_and_module_objects(ray_start, tmp_path, clean_modules):
    write(tmp_path, "renv_pkg_a/__init__.py", "def who():\n    return 'pkg a'\n")
    write(tmp_path, "single/renv_single.py", "X = 7\n")
    write(tmp_path, "imported/renv_pkg_b/__init__.py", "Y = 'b'\n")
    sys.path.insert(0, str(tmp_path / "imported"))
    try:
        import renv_pkg_b
    finally:
        sys.path.remove(str(tmp_path / "imported"))

    @skate.remote
    def use():
        import renv_pkg_a
        import renv_pkg_b
        import renv_single

        return renv_pkg_a.who(), renv_single.X, renv_pkg_b.Y

    renv = {"py_modules": [str(tmp_path / "renv_pkg_a"), str(tmp_path / "single/renv_single.py"), renv_pkg_b]}
    assert skate.get(use.options(runtime_env=renv).remote()) == ("pkg a", 7, "b")


def test_job_working_dir_reaches_every_task_and_actor(project, clean_modules):
    skate.init(num_cpus=2, runtime_env={"working_dir": str(project)})
    try:
        @skate.remote
        def value():
            import renv_wd_mod

            return renv_wd_mod.VALUE

        @skate.remote
        class A:
            def value(self):
                import renv_wd_mod

                return renv_wd_mod.VALUE

        assert skate.get(value.remote()) == "from working_dir"
        assert skate.get(A.remote().value.remote()) == "from working_dir"
    finally:
        skate.shutdown()


def test_workers_are_pooled_per_runtime_env(ray_start):
    a = pid.options(runtime_env={"env_vars": {"POOL": "a"}})
    b = pid.options(runtime_env={"env_vars": {"POOL": "b"}})
    pids_a, pids_b, pids_plain = set(), set(), set()
    for _ in range(4):
        pids_a.add(skate.get(a.remote()))
        pids_b.add(skate.get(b.remote()))
        pids_plain.add(skate.get(pid.remote()))
    assert not (pids_a & pids_b) and not (pids_a & pids_plain) and not (pids_b & pids_plain)
    # Within one environment, workers are reused.
    assert len(pids_a) <= 2 and len(pids_b) <= 2


def test_unsupported_fields_name_what_is_supported(ray_start):
    for field, value in [("pip", ["requests"]), ("conda", "env"), ("uv", ["x"]), ("container", {"image": "i"}),
                         ("image_uri", "img"), ("nsight", "default"), ("py_executable", "python3")]:
        with pytest.raises(NotImplementedError, match=rf"{field}.*Supported fields: env_vars, working_dir, py_modules"):
            pid.options(runtime_env={field: value})
    with pytest.raises(NotImplementedError, match="remote URIs"):
        pid.options(runtime_env={"working_dir": "s3://bucket/wd.zip"})
    with pytest.raises(NotImplementedError, match="pip"):
        skate.remote(runtime_env={"py_modules": ["x-1.0-py3-none-any.whl"]})(lambda: 1)
    with pytest.raises(TypeError, match="eager_install"):
        pid.options(runtime_env={"config": {"eager_install": "yes"}})
    with pytest.raises(ValueError, match="unknown runtime_env field 'not_a_field'"):
        pid.options(runtime_env={"not_a_field": 1})
    with pytest.raises(TypeError, match="Dict\\[str, str\\]"):
        pid.options(runtime_env={"env_vars": {"A": 1}})
    with pytest.raises(ValueError, match="does not exist"):
        pid.options(runtime_env={"working_dir": "/no/such/folder"})
    with pytest.raises(ValueError, match="setup_timeout_seconds"):
        pid.options(runtime_env={"config": {"setup_timeout_seconds": 0}})
    # An empty environment asks for nothing.
    assert skate.get(pid.options(runtime_env={}).remote()) > 0


def test_init_refuses_unsupported_fields_before_starting():
    with pytest.raises(NotImplementedError, match="pip"):
        skate.init(num_cpus=1, runtime_env={"pip": ["requests"]})
    assert not skate.is_initialized()


def test_a_package_missing_from_the_cluster_is_a_setup_error(ray_start):
    missing = "gcs://_skate_pkg_" + "0" * 32 + ".zip"
    with pytest.raises(skate.exceptions.RuntimeEnvSetupError, match="not in the cluster's key-value store"):
        skate.get(pid.options(runtime_env={"working_dir": missing}).remote(), timeout=60)
    # The node is fine afterwards.
    assert skate.get(pid.remote(), timeout=60) > 0


def test_runtime_env_classes_are_dicts(ray_start):
    from skate.runtime_env import RuntimeEnv, RuntimeEnvConfig

    renv = RuntimeEnv(env_vars={"CLS": "yes"}, config=RuntimeEnvConfig(setup_timeout_seconds=30))
    assert renv == {"env_vars": {"CLS": "yes"}, "config": {"setup_timeout_seconds": 30, "eager_install": True}}
    assert RuntimeEnv.deserialize(renv.serialize()) == renv
    assert skate.get(env.options(runtime_env=renv).remote("CLS")) == {"CLS": "yes"}
    with pytest.raises(NotImplementedError, match="pip"):
        RuntimeEnv(pip=["x"])
