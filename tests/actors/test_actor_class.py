"""The actor class surface: options, lookups, class attributes, inheritance, dir(), @method.

Each test runs real worker processes on a local cluster (see conftest.py).
"""

from __future__ import annotations

import functools

import pytest

import skate
from skate.exceptions import PendingCallsLimitExceeded


class Base:
    LIMIT = 3

    def __init__(self, x):
        self.x = x

    def base_value(self):
        return self.x + self.LIMIT


class CooperativeBase:
    def __init__(self, tag):
        super().__init__()
        self.tag = tag

    def tag_of(self):
        return self.tag


@skate.remote
class Child(Base):
    SCALE = 10

    def __init__(self, x):
        super().__init__(x)

    @staticmethod
    def double(v):
        return v * 2

    def use_class_attributes(self):
        # Through the class's name (which is the actor class), self and type(self).
        return Child.SCALE, Child.double(4), self.double(self.SCALE), type(self).LIMIT


def test_class_attributes_and_static_methods_from_methods(ray_start):
    c = Child.remote(1)
    assert skate.get(c.use_class_attributes.remote()) == (10, 8, 20, 3)
    assert Child.SCALE == 10 and Child.double(2) == 4  # on the driver too, like Ray


def test_inherited_methods_and_super_init(ray_start):
    c = Child.remote(5)
    assert skate.get(c.base_value.remote()) == 8

    @skate.remote
    class Tagged(CooperativeBase):
        def __init__(self):
            super().__init__("t1")

    assert skate.get(Tagged.remote().tag_of.remote()) == "t1"


def test_dir_of_a_handle_lists_its_methods(ray_start):
    c = Child.remote(1)
    names = dir(c)
    for m in ("base_value", "double", "use_class_attributes"):
        assert m in names


def _passthrough(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def test_method_num_returns_through_user_decorators(ray_start):
    @skate.remote
    class Pairs:
        @_passthrough
        @skate.method(num_returns=2)
        def outer(self):
            return 1, 2

        @skate.method(num_returns=3)
        @_passthrough
        def inner(self):
            return 3, 4, 5

    p = Pairs.remote()
    a, b = p.outer.remote()
    assert skate.get([a, b]) == [1, 2]
    assert skate.get(list(p.inner.remote())) == [3, 4, 5]


def test_get_if_exists_returns_the_existing_actor(ray_start):
    a = Child.options(name="gie", get_if_exists=True).remote(1)
    b = Child.options(name="gie", get_if_exists=True).remote(100)
    assert skate.get(b.base_value.remote()) == 4
    assert a == b


def test_get_if_exists_from_racing_tasks_yields_one_actor(ray_start):
    @skate.remote
    def make(i):
        h = Child.options(name="race", get_if_exists=True, lifetime="detached").remote(i)
        return skate.get(h.base_value.remote())

    values = skate.get([make.remote(i) for i in range(4)], timeout=60)
    assert len(set(values)) == 1
    skate.kill(skate.get_actor("race"))


def test_get_actor_error_reads_like_ray(ray_start):
    with pytest.raises(ValueError, match="Failed to look up actor with name 'nobody'"):
        skate.get_actor("nobody")


def test_method_options_are_validated(ray_start):
    with pytest.raises(ValueError, match="Invalid option"):
        skate.method(bogus=1)
    with pytest.raises(TypeError, match="retry_exceptions"):
        skate.method(retry_exceptions="yes")
    c = Child.remote(1)
    with pytest.raises(ValueError, match="Invalid option"):
        c.base_value.options(max_retries=2)
    with pytest.raises(ValueError, match="max_restarts"):
        Child.options(max_restarts=-2)


def test_max_pending_calls_raises_pending_calls_limit_exceeded(ray_start, tmp_path):
    @skate.remote(max_pending_calls=2)
    class Gate:
        def wait(self, path):
            import os
            import time

            while not os.path.exists(path):
                time.sleep(0.01)
            return 1

    g = Gate.remote()
    gate = tmp_path / "open"
    refs = [g.wait.remote(str(gate)) for _ in range(2)]
    with pytest.raises(PendingCallsLimitExceeded):
        g.wait.remote(str(gate))
    gate.touch()
    assert skate.get(refs, timeout=30) == [1, 1]
    assert skate.get(g.wait.remote(str(gate)), timeout=30) == 1
