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
    with pytest.raises(NotImplementedError, match="nccl"):
        inp.with_tensor_transport(transport="nccl")
    with pytest.raises(NotImplementedError, match="_static_shape"):
        inp.with_tensor_transport(_static_shape=True)
    assert inp.with_tensor_transport(device="gpu")._type_hint.device == "cuda"
