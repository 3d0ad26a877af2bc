"""CallSignature (skate/_private/signature.py): its fast paths accept exactly what
``inspect.Signature.bind`` accepts, and it survives pickling (handles carry it)."""

from __future__ import annotations

import inspect
import itertools
import pickle

import pytest

from skate._private.signature import CallSignature


def f1(a, b=1, *, c, d=2):
    pass


def f2(a, b=1):
    pass


def f3(x, y, z=3):
    pass


def f4(a, *args, b, **kw):
    pass


def f5(a, /, b, *, c=1):
    pass


def f6():
    pass


def f7(*, only):
    pass


@pytest.mark.parametrize("fn", [f1, f2, f3, f4, f5, f6, f7])
def test_agrees_with_bind_on_every_small_call(fn):
    cs = pickle.loads(pickle.dumps(CallSignature(fn, fn.__name__)))
    sig = inspect.signature(fn)
    names = ["a", "b", "c", "d", "x", "y", "z", "only", "other"]
    for npos in range(5):
        for kw in itertools.chain.from_iterable(itertools.combinations(names, k) for k in range(4)):
            args, kwargs = tuple(range(npos)), dict.fromkeys(kw, 0)
            try:
                sig.bind(*args, **kwargs)
                expected = True
            except TypeError:
                expected = False
            try:
                cs.check(args, kwargs)
                got = True
            except TypeError as e:
                assert str(e).startswith(f"{fn.__name__}(): ")
                got = False
            assert got == expected, (args, kwargs)


def test_methods_drop_self_and_defaults_are_not_kept():
    class A:
        def m(self, x, big=object()):
            pass

    cs = CallSignature(A.m, "A.m", drop_first=True)
    cs.check((1,), {})
    with pytest.raises(TypeError):
        cs.check((), {})
    assert all(p.default in (None, inspect.Parameter.empty) for p in cs.sig.parameters.values())


def test_callables_without_a_signature_are_not_checked():
    cs = CallSignature(print, "print")
    cs.check((1, 2, 3), {"sep": ""})
