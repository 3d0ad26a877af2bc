"""Arguments are bound to the callee's signature at the call site (like Ray):
a wrong call raises TypeError from ``.remote()`` / ``.bind()`` and submits nothing."""

from __future__ import annotations

import functools

import pytest

import skate


def test_task_with_too_many_arguments_raises_at_the_call_site(ray_start):
    @skate.remote
    def f():
        return 1

    with pytest.raises(TypeError, match="too many positional arguments"):
        f.remote(1)
    assert skate.get(f.remote()) == 1


def test_task_argument_mixes(ray_start):
    @skate.remote
    def g(a, b=2, *args, c, d=4, **kw):
        return a, b, args, c, d, kw

    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        g.remote(c=1)
    with pytest.raises(TypeError, match="missing a required argument: 'c'"):
        g.remote(1)
    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        g.remote(1, a=2, c=3)
    assert skate.get(g.remote(1, 2, 3, 4, c=5, e=6)) == (1, 2, (3, 4), 5, 4, {"e": 6})

    @skate.remote
    def h(x, /, *, y):
        return x + y

    with pytest.raises(TypeError):
        h.remote(x=1, y=2)  # positional-only passed by keyword
    with pytest.raises(TypeError, match="too many positional arguments"):
        h.remote(1, 2)
    assert skate.get(h.remote(1, y=2)) == 3


def test_options_and_underscore_remote_check_arguments_too(ray_start):
    @skate.remote
    def f(x):
        return x

    with pytest.raises(TypeError):
        f.options(num_cpus=1).remote()
    with pytest.raises(TypeError):
        f._remote(args=[1, 2])
    assert skate.get(f._remote(args=[5])) == 5
    assert skate.get(f._remote(kwargs={"x": 6}, num_cpus=1)) == 6


def test_actor_constructor_arguments_are_checked(ray_start):
    @skate.remote
    class A:
        def __init__(self, x, *, y=0):
            self.v = x + y

        def get(self):
            return self.v

    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        A.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        A.remote(1, 2)
    with pytest.raises(TypeError):
        A.options(name="checked").remote(z=1)
    a = A.remote(1, y=2)
    assert skate.get(a.get.remote()) == 3


def test_actor_method_arguments_are_checked(ray_start):
    @skate.remote
    class A:
        def m(self, a, *args, k):
            return a, args, k

        @staticmethod
        def s(x):
            return x

        @classmethod
        def c(cls, y):
            return y

    a = A.remote()
    with pytest.raises(TypeError, match="missing a required argument: 'k'"):
        a.m.remote(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        a.s.remote(1, 2)
    with pytest.raises(TypeError, match="missing a required argument: 'y'"):
        a.c.remote()
    with pytest.raises(TypeError):
        a.m.options(num_returns=1).remote()
    assert skate.get(a.m.remote(1, 2, k=3)) == (1, (2,), 3)
    assert skate.get(a.s.remote(4)) == 4
    assert skate.get(a.c.remote(5)) == 5


def test_handles_passed_to_tasks_still_check_arguments(ray_start):
    @skate.remote
    class A:
        def m(self, a):
            return a

    @skate.remote
    def use(h):
        try:
            h.m.remote()
        except TypeError as e:
            return f"TypeError: {e}"
        return "no error"

    assert skate.get(use.remote(A.remote())).startswith("TypeError")


def test_bind_checks_arguments():
    @skate.remote
    def f(x):
        return x

    @skate.remote
    class A:
        def __init__(self, x):
            pass

    with pytest.raises(TypeError):
        f.bind()
    with pytest.raises(TypeError):
        A.bind(1, 2)


def test_user_decorated_function_with_num_returns(ray_start):
    """A function wrapped by a user decorator (functools.wraps) keeps its signature
    check and its ``num_returns``, for tasks and actor methods."""

    def logged(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    @skate.remote(num_returns=2)
    @logged
    def pair(x):
        return x, x + 1

    a, b = pair.remote(1)
    assert skate.get([a, b]) == [1, 2]
    with pytest.raises(TypeError):
        pair.remote()

    @skate.remote
    class A:
        @skate.method(num_returns=2)
        @logged
        def two(self):
            return 1, 2

        @logged
        @skate.method(num_returns=2)
        def two_outer(self):
            return 3, 4

    h = A.remote()
    x, y = h.two.remote()
    z, w = h.two_outer.remote()
    assert skate.get([x, y, z, w]) == [1, 2, 3, 4]


def test_underscore_remote_on_actor_classes_and_methods(ray_start):
    """``Actor._remote()`` (what Ray's own microbenchmark script and libraries call),
    with and without arguments and options."""

    @skate.remote
    class Counter:
        def __init__(self, start=0):
            self.n = start

        def add(self, k=1):
            self.n += k
            return self.n

    c = Counter._remote()
    assert skate.get(c.add.remote()) == 1
    d = Counter._remote(args=[10], kwargs={}, num_cpus=0, name="counter-d")
    assert skate.get(d.add._remote(args=[5])) == 15
    assert skate.get(d.add._remote(kwargs={"k": 2}, name="named-call")) == 17
    assert skate.get_actor("counter-d") == d
    with pytest.raises(TypeError):
        Counter._remote(args=[1, 2])


def test_method_options_found_under_a_decorator_that_does_not_copy_attributes(ray_start):
    def bare(fn):
        @functools.wraps(fn, updated=())  # sets __wrapped__ but copies no attributes
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    @skate.remote
    class A:
        @bare
        @skate.method(num_returns=2)
        def two(self):
            return 5, 6

    x, y = A.remote().two.remote()
    assert skate.get([x, y]) == [5, 6]
