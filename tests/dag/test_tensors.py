"""Torch tensors through compiled graphs with ``with_tensor_transport`` (CPU; skipped without torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import skate  # noqa: E402
from skate.dag import InputNode, MultiOutputNode  # noqa: E402
from skate.exceptions import RayTaskError  # noqa: E402


def _in_shared_memory(ptr: int) -> bool:
    """True when address ``ptr`` of this process lies in a mapping of /dev/shm."""
    with open("/proc/self/maps") as f:
        for line in f:
            if "/dev/shm/" not in line:
                continue
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


@skate.remote
class TensorActor:
    def describe(self, t):
        return {
            "device": t.device.type,
            "shape": tuple(t.shape),
            "dtype": str(t.dtype),
            "sum": float(t.float().sum()),
            "in_shm": _in_shared_memory(t.data_ptr()),
        }

    def kind(self, x):
        return type(x).__name__

    def make(self, n, dtype="float32"):
        return torch.arange(n).to(getattr(torch, dtype))

    def pair(self, d):
        return {"a": d["a"] * 2, "b": [d["b"][0] + 1]}


def test_cpu_tensor_input_is_read_in_place(ray_start_4cpu):
    a = TensorActor.remote()
    with InputNode() as inp:
        inp = inp.with_tensor_transport(device="cpu")
        dag = a.describe.bind(inp)
    cdag = dag.experimental_compile()
    t = torch.ones(64, 1024)  # 256 KiB: through the shared-memory slot
    info = skate.get(cdag.execute(t))
    assert info == {"device": "cpu", "shape": (64, 1024), "dtype": "torch.float32", "sum": 65536.0, "in_shm": True}
    small = skate.get(cdag.execute(torch.ones(3)))  # small: inline in the socket frame
    assert small["sum"] == 3.0 and small["device"] == "cpu"
    cdag.teardown()


def test_tensors_come_back_to_the_driver_with_their_dtype(ray_start_4cpu):
    a, b = TensorActor.remote(), TensorActor.remote()
    with InputNode() as inp:
        made = a.make.bind(inp[0], inp[1]).with_tensor_transport()
        dag = MultiOutputNode([made, b.describe.bind(made)])
    cdag = dag.experimental_compile()
    for dtype in ("float32", "bfloat16", "int64", "bool"):
        t, info = skate.get(cdag.execute(100_000, dtype))
        assert isinstance(t, torch.Tensor) and t.dtype == getattr(torch, dtype)
        assert torch.equal(t, torch.arange(100_000).to(getattr(torch, dtype)))
        assert info["dtype"] == f"torch.{dtype}" and info["in_shm"]
    cdag.teardown()


def test_tensors_nested_in_containers(ray_start_4cpu):
    a = TensorActor.remote()
    with InputNode() as inp:
        dag = a.pair.bind(inp.with_tensor_transport()).with_tensor_transport()
    cdag = dag.experimental_compile()
    out = skate.get(cdag.execute({"a": torch.ones(2, 2), "b": [torch.zeros(3)]}))
    assert torch.equal(out["a"], torch.full((2, 2), 2.0))
    assert torch.equal(out["b"][0], torch.ones(3))
    cdag.teardown()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_device_without_a_gpu_fails_the_execution_only(ray_start_4cpu):
    a = TensorActor.remote()
    with InputNode() as inp:
        dag = a.kind.bind(inp.with_tensor_transport(device="cuda"))
    cdag = dag.experimental_compile()
    with pytest.raises(RayTaskError, match="reading a compiled graph value"):
        skate.get(cdag.execute(torch.ones(4)))
    assert skate.get(cdag.execute("no tensor")) == "str"  # the graph still runs
    cdag.teardown()


def test_transport_arguments_are_checked():
    with InputNode() as inp:
        pass
    with pytest.raises(ValueError, match="device"):
        inp.with_tensor_transport(device="tpu")
    with pytest.raises(NotImplementedError, match="not supported"):
        inp.with_tensor_transport(transport="shm")
    with pytest.raises(NotImplementedError, match="_static_shape"):
        inp.with_tensor_transport(_static_shape=True)
    assert inp.with_tensor_transport(device="gpu")._type_hint.device == "cuda"


@skate.remote
class Sender:
    def send(self, shape):
        return {"t": torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape), "tag": "x"}


@skate.remote
class Receiver:
    def recv(self, value):
        t = value["t"]
        return tuple(t.shape), float(t.sum()), t.device.type, _in_shared_memory(t.data_ptr()), value["tag"]


def test_point_to_point_transport_over_gloo(ray_start_4cpu, monkeypatch):
    # The code path of transport="nccl", with gloo moving CPU tensors (no GPU here).
    monkeypatch.setenv("RAY_CGRAPH_p2p_backend", "gloo")
    sender, r1, r2 = Sender.remote(), Receiver.remote(), Receiver.remote()
    with InputNode() as inp:
        sent = sender.send.bind(inp).with_tensor_transport("nccl")
        dag = MultiOutputNode([r1.recv.bind(sent), r2.recv.bind(sent)])
    cdag = dag.experimental_compile()
    for rows in (10, 300):  # small, and 300 KB: neither goes through the channel
        expected = (rows, 256), float(sum(range(rows * 256))), "cpu", False, "x"
        assert skate.get(cdag.execute((rows, 256))) == [expected, expected]
    cdag.teardown()


@skate.remote
class Crossed:
    def tensor(self, n):
        return torch.ones(n)

    def size(self, t):
        return t.numel()

    def after(self, x):
        return ("after", x)

    def join(self, first, t):
        return first, float(t.sum())


@pytest.mark.timeout(120)
def test_point_to_point_tensors_read_in_another_order_than_sent(ray_start_4cpu, monkeypatch):
    # y sends its tensor to x, then feeds z; x reads z's value first.  The
    # tensor's send waits for x to receive it, so x must receive it while it
    # waits for z (when it reads that channel ahead), not when it gets to it.
    monkeypatch.setenv("RAY_CGRAPH_p2p_backend", "gloo")
    y, z, x = Crossed.remote(), Crossed.remote(), Crossed.remote()
    with InputNode() as inp:
        t = y.tensor.bind(inp).with_tensor_transport("nccl")
        dag = x.join.bind(z.after.bind(y.size.bind(t)), t)
    cdag = dag.experimental_compile()
    try:
        for n in (10, 100_000):
            assert skate.get(cdag.execute(n), timeout=60) == (("after", n), float(n))
    finally:
        cdag.teardown()


def test_point_to_point_transport_errors(ray_start_4cpu, monkeypatch):
    sender, r = Sender.remote(), Receiver.remote()
    with InputNode() as inp:
        to_driver = sender.send.bind(inp).with_tensor_transport("nccl")
    with pytest.raises(ValueError, match="driver"):
        to_driver.experimental_compile()
    with InputNode() as inp:
        dag = r.recv.bind(inp.with_tensor_transport("nccl"))
    with pytest.raises(ValueError, match="driver's input"):
        dag.experimental_compile()
    if not torch.cuda.is_available():
        monkeypatch.delenv("RAY_CGRAPH_p2p_backend", raising=False)
        monkeypatch.delenv("SKATE_CGRAPH_p2p_backend", raising=False)
        with InputNode() as inp:
            dag = r.recv.bind(sender.send.bind(inp).with_tensor_transport("nccl"))
        with pytest.raises(RuntimeError, match="needs a GPU"):
            dag.experimental_compile()
        # Both actors are free for another graph after the failed compile.
        with InputNode() as inp:
            ok = r.recv.bind(sender.send.bind(inp).with_tensor_transport())
        cdag = ok.experimental_compile()
        assert skate.get(cdag.execute((2, 2)))[1] == 6.0
        cdag.teardown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_tensor_arrives_on_the_actors_gpu(ray_start_4cpu):
    a = TensorActor.remote()
    with InputNode() as inp:
        dag = a.describe.bind(inp.with_tensor_transport(device="cuda"))
    cdag = dag.experimental_compile()
    info = skate.get(cdag.execute(torch.ones(1000)))
    assert info["device"] == "cuda" and info["sum"] == 1000.0
    cdag.teardown()
