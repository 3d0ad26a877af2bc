"""Torch tensors on an edge with a tensor transport hint (``with_tensor_transport``).

Such an edge pickles each ``torch.Tensor`` in a value as its raw bytes, a
numpy view travelling as an out-of-band buffer: in shared memory (one node)
the tensor is written once and the reader's tensor is a view of the slot,
no copy.  The writer also decides where the reader's tensor lives: ``cpu``,
``cuda`` (the reading actor's current GPU), or, for ``default``, the device
type the tensor had.  torch is imported only by processes that already
imported it (a value cannot hold a tensor otherwise).  With
``transport="nccl"`` tensors skip the channel (see below).
"""

from __future__ import annotations

import pickle
import sys
import threading
import warnings
from typing import Any

import cloudpickle

DEVICES = ("default", "cpu", "cuda", "gpu")


class _TensorPickler(cloudpickle.CloudPickler):
    def __init__(self, file: Any, device: str, buffer_callback: Any) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._device = device
        self._torch = sys.modules.get("torch")

    def reducer_override(self, obj: Any) -> Any:
        torch = self._torch
        if torch is not None and isinstance(obj, torch.Tensor):
            t = obj.detach()
            target = self._device
            if target == "default":
                target = "cuda" if t.is_cuda else "cpu"
            raw = t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
            return _rebuild, (raw, str(t.dtype).removeprefix("torch."), tuple(t.shape), target)
        return super().reducer_override(obj)


def dumps(value: Any, device: str) -> tuple[bytes, list]:
    """Pickles ``value`` with its tensors as out-of-band byte buffers bound for ``device``.

    Returns:
        ``(data, buffers)`` as ``serialization.dumps`` gives them.
    """
    import io

    bufs: list = []
    f = io.BytesIO()
    _TensorPickler(f, "cuda" if device == "gpu" else device, bufs.append).dump(value)
    return f.getvalue(), [b.raw() for b in bufs]


def _rebuild(raw: Any, dtype: str, shape: tuple, device: str) -> Any:
    """A tensor over ``raw`` (no copy on the CPU), moved to ``device``."""
    import torch

    with warnings.catch_warnings():  # a view of read-only shared memory: torch warns, as numpy arrays are read-only there
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(raw)
    t = t.view(getattr(torch, dtype)).reshape(shape)
    if device == "cuda":
        t = t.to("cuda")
    return t


# --- point-to-point transport (``transport="nccl"``) --------------------------------------
#
# The value's frame still goes through the channel, with each tensor replaced
# by its shape and dtype; the tensors themselves go from the writer's process
# group rank to each reader's with send/recv (NCCL between GPUs; gloo, on CPU
# tensors, when ``RAY_CGRAPH_p2p_backend=gloo``), in the order the value
# pickles them, tagged with the edge id.

_recv_ctx = threading.local()


class _P2PPickler(cloudpickle.CloudPickler):
    def __init__(self, file: Any, tensors: list) -> None:
        super().__init__(file, protocol=5)
        self._tensors = tensors
        self._torch = sys.modules.get("torch")

    def reducer_override(self, obj: Any) -> Any:
        torch = self._torch
        if torch is not None and isinstance(obj, torch.Tensor):
            t = obj.detach().contiguous()
            self._tensors.append(t)
            return _recv_tensor, (str(t.dtype).removeprefix("torch."), tuple(t.shape))
        return super().reducer_override(obj)


def dumps_p2p(value: Any) -> tuple[bytes, list]:
    """Pickles ``value`` with its tensors left out; returns ``(data, tensors)`` (tensors in pickling order)."""
    import io

    tensors: list = []
    f = io.BytesIO()
    _P2PPickler(f, tensors).dump(value)
    return f.getvalue(), tensors


def send_tensors(p2p: tuple, tensors: list) -> None:
    """Sends each tensor to each reader rank (``p2p`` is ``(group, reader ranks, tag, backend)``)."""
    group, ranks, tag, backend = p2p
    for t in tensors:
        if backend == "gloo" and t.is_cuda:
            t = t.cpu()
        for r in ranks:
            group.send([t], r, tag).wait()


def loads_p2p(data: Any, p2p: tuple) -> Any:
    """Unpickles a value whose tensors come from the writer rank (``p2p`` is ``(group, writer rank, tag, backend, device)``)."""
    _recv_ctx.p2p = p2p
    try:
        return pickle.loads(data)
    finally:
        _recv_ctx.p2p = None


def _recv_tensor(dtype: str, shape: tuple) -> Any:
    """Rebuilds one tensor of a value: received from the writer, on the hinted device."""
    import torch

    group, src, tag, backend, device = _recv_ctx.p2p
    t = torch.empty(shape, dtype=getattr(torch, dtype), device="cuda" if backend == "nccl" else "cpu")
    group.recv([t], src, tag).wait()
    if device == "cuda" and not t.is_cuda:
        t = t.to("cuda")
    elif device == "cpu" and t.is_cuda:
        t = t.cpu()
    return t


def make_group(p2p: dict) -> Any:
    """This process's member of the graph's process group (``p2p`` from ``ActorPlan.p2p``).

    Raises:
        RuntimeError: for the NCCL backend in a process without a GPU.
    """
    import datetime

    import torch
    import torch.distributed as dist

    backend = p2p["backend"]
    timeout = datetime.timedelta(seconds=p2p["timeout"])
    store = dist.PrefixStore(p2p["prefix"], dist.TCPStore(p2p["host"], p2p["port"], is_master=False, timeout=timeout))
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "transport='nccl' needs a GPU in every actor that sends or receives its tensors; this actor "
                "has none (set RAY_CGRAPH_p2p_backend=gloo to move CPU tensors the same way)"
            )
        return dist.ProcessGroupNCCL(store, p2p["rank"], p2p["world"])
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, p2p["rank"], p2p["world"], timeout)
    raise ValueError(f"unknown point-to-point backend {backend!r} (RAY_CGRAPH_p2p_backend: 'nccl' or 'gloo')")
