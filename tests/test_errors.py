"""Errors people can read: a task's exception reaches the caller as a RayTaskError
(dual-typed when it can be) with the original type name, message and remote
traceback -- even when the exception cannot be rebuilt -- and the traceback shows
the user's files and source lines, not skate's frames."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import skate
from skate.exceptions import RayTaskError


class TwoArgError(Exception):
    """Its constructor takes other arguments than its ``args``: pickle cannot rebuild it."""

    def __init__(self, a, b):
        super().__init__(f"a={a} b={b}")
        self.a = a


class ReadOnlyArgsError(Exception):
    """``args`` is a read-only property."""

    @property
    def args(self):
        return ("read-only",)


def _helper_that_fails(x):
    raise ValueError(f"helper failed with {x}")


@skate.remote
def raises(kind):
    if kind == "two":
        raise TwoArgError(1, 2)
    if kind == "ro":
        raise ReadOnlyArgsError("ro")
    _helper_that_fails(kind)


def test_exception_with_other_constructor_arguments_still_arrives(ray_start):
    with pytest.raises(RayTaskError) as info:
        skate.get(raises.remote("two"))
    e = info.value
    assert isinstance(e, TwoArgError)  # dual-typed: the class itself could be sent
    text = str(e)
    assert "TwoArgError: a=1 b=2" in text
    assert "raise TwoArgError(1, 2)" in text  # the remote traceback, with the source line
    assert e.cause is None  # the instance itself could not be rebuilt here


def test_exception_with_read_only_args_arrives(ray_start):
    with pytest.raises(ReadOnlyArgsError) as info:
        skate.get(raises.remote("ro"))
    assert isinstance(info.value, RayTaskError)
    assert "ReadOnlyArgsError" in str(info.value)
    assert 'raise ReadOnlyArgsError("ro")' in str(info.value)


def test_ordinary_exception_is_dual_typed_with_its_cause(ray_start):
    with pytest.raises(ValueError) as info:
        skate.get(raises.remote("v"))
    e = info.value
    assert isinstance(e, RayTaskError)
    assert type(e).__name__ == "RayTaskError(ValueError)"
    assert isinstance(e.cause, ValueError) and str(e.cause) == "helper failed with v"


def test_traceback_shows_user_files_and_lines_not_skate_frames(ray_start):
    with pytest.raises(ValueError) as info:
        skate.get(raises.remote("v"))
    text = str(info.value)
    assert f'File "{__file__}"' in text
    assert "_helper_that_fails(kind)" in text
    assert 'raise ValueError(f"helper failed with {x}")' in text
    assert "<dynamic-code>" not in text
    skate_dir = os.path.dirname(skate.__file__)
    assert skate_dir not in text, text
    assert "executor.py" not in text


def test_error_names_task_pid_and_node(ray_start):
    @skate.remote
    def where():
        import os

        return os.getpid()

    with pytest.raises(ValueError) as info:
        skate.get(raises.remote("v"))
    e = info.value
    first = str(e).splitlines()[0]
    assert first.startswith("skate::raises() (pid=")
    assert f"pid={e.pid}" in first and f"ip={e.ip}" in first
    assert e.pid != os.getpid()
    assert e.function_name == "raises"


def test_actor_error_names_the_actor(ray_start):
    @skate.remote
    class Worker:
        def fail(self):
            raise KeyError("nope")

    w = Worker.remote()
    with pytest.raises(KeyError) as info:
        skate.get(w.fail.remote())
    first = str(info.value).splitlines()[0]
    assert first.startswith("skate::Worker.fail() (pid=")
    assert f"actor_id={w._ray_actor_id.hex()}" in first
    assert "repr=Worker" in first


def test_nested_task_error_keeps_both_tracebacks(ray_start):
    @skate.remote
    def outer():
        return skate.get(raises.remote("inner"))

    with pytest.raises(ValueError) as info:
        skate.get(outer.remote())
    text = str(info.value)
    assert text.startswith("skate::outer()")
    assert "skate::raises()" in text
    assert "helper failed with inner" in text


def test_exception_class_only_defined_in_the_worker(ray_start):
    """A class the caller cannot unpickle (here: made inside the task) still gives a
    RayTaskError with its name, message and traceback."""

    @skate.remote
    def odd():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("cannot pickle Local")

        raise Local("only here")

    with pytest.raises(RayTaskError) as info:
        skate.get(odd.remote())
    assert "Local: only here" in str(info.value)


def test_source_lines_are_shipped_with_code_defined_in_main(tmp_path):
    """A script's functions travel by value; the worker shows their real file and
    source lines even when the file is gone by then."""
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            import skate

            @skate.remote
            def task():
                value = 41
                raise RuntimeError(f"user code failed at {value + 1}")

            skate.init(num_cpus=1)
            try:
                ref = task.remote()
                os.rename(sys.argv[0], sys.argv[0] + ".moved")
                try:
                    skate.get(ref)
                except RuntimeError as e:
                    print(str(e))
            finally:
                skate.shutdown()
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(skate.__file__)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert f'File "{script}", line 8, in task' in out.stdout, out.stdout
    assert 'raise RuntimeError(f"user code failed at {value + 1}")' in out.stdout
    assert "<dynamic-code>" not in out.stdout


def test_error_info_lists_unhandled_task_errors(ray_start):
    """``error_info()`` (early Ray releases): errors of failed tasks nobody read."""
    from conftest import wait_for

    @skate.remote
    def f():
        raise Exception("This task failed!!")

    f.remote()  # the result is dropped: the error is printed in the background
    infos = wait_for(skate.error_info, 30, what="the unhandled error to be recorded")
    assert any("This task failed!!" in i["message"] for i in infos)
    assert all(i["type"] == "task" for i in infos)
