"""Compiled graphs whose values are larger than a socket's buffer: no process waits on another forever.

A value that does not fit a shared-memory slot (``_buffer_size_bytes``
small here) goes through its socket only as fast as its reader reads it.
These graphs are built so that a process reads its channels in another
order than its writers write them; each would hang if a blocked read or
write did not keep the process's other inbound channels read.
"""

from __future__ import annotations

import pytest

import skate
from skate.dag import InputNode, MultiOutputNode

BIG = 4 * 1024 * 1024  # bytes: many times a socket's buffer


@skate.remote
class Stage:
    def big(self, x):
        return b"b" * BIG

    def small(self, x):
        return len(x) if isinstance(x, bytes) else x

    def after(self, x):
        return ("after", x)

    def join(self, first, second):
        return first, len(second)


@pytest.mark.timeout(120)
def test_an_actor_waiting_for_one_input_keeps_reading_the_other(ray_start_4cpu):
    # y writes `big` to x first (x reads it second), then `small` to z;
    # x waits for z's value, which needs y's second write.
    y, z, x = Stage.remote(), Stage.remote(), Stage.remote()
    with InputNode() as inp:
        first = y.big.bind(inp)
        second = y.small.bind(inp)
        dag = MultiOutputNode([first, x.join.bind(z.after.bind(second), first)])
    cdag = dag.experimental_compile(_buffer_size_bytes=4096)
    try:
        for i in range(3):
            blob, joined = skate.get(cdag.execute(i), timeout=60)
            assert len(blob) == BIG and joined == (("after", i), BIG)
    finally:
        cdag.teardown()


@pytest.mark.timeout(120)
def test_the_driver_waiting_for_one_output_keeps_reading_the_others(ray_start_4cpu):
    # b's first method sends `big` to the driver, and only then does b feed a;
    # the driver reads a's output first.
    a, b = Stage.remote(), Stage.remote()
    with InputNode() as inp:
        blob = b.big.bind(inp)
        dag = MultiOutputNode([a.after.bind(b.small.bind(blob)), blob])
    cdag = dag.experimental_compile(_buffer_size_bytes=4096)
    try:
        for _ in range(3):
            first, second = cdag.execute(0)
            assert skate.get(first, timeout=60) == ("after", BIG)
            assert len(skate.get(second, timeout=60)) == BIG
    finally:
        cdag.teardown()


@pytest.mark.timeout(120)
def test_several_large_executions_in_flight_with_crossed_reads(ray_start_4cpu):
    # The two graphs above at once, with executions pipelined: the driver's
    # input writes block too and must keep the outputs read.
    y, z, x = Stage.remote(), Stage.remote(), Stage.remote()
    with InputNode() as inp:
        first = y.big.bind(inp)
        dag = MultiOutputNode([x.join.bind(z.after.bind(y.small.bind(first)), first), first])
    cdag = dag.experimental_compile(_buffer_size_bytes=4096, _max_inflight_executions=4)
    try:
        refs = [cdag.execute(b"i" * BIG) for _ in range(4)]
        for joined_ref, blob_ref in refs:
            assert skate.get(joined_ref, timeout=60) == (("after", BIG), BIG)
            assert len(skate.get(blob_ref, timeout=60)) == BIG
    finally:
        cdag.teardown()
