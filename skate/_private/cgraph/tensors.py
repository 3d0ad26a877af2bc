"""Torch tensors on an edge with a tensor transport hint (``with_tensor_transport``).

Such an edge pickles each ``torch.Tensor`` in a value as its raw bytes, a
numpy view travelling as an out-of-band buffer: in shared memory (one node)
the tensor is written once and the reader's tensor is a view of the slot,
no copy.  The writer also decides where the reader's tensor lives: ``cpu``,
``cuda`` (the reading actor's current GPU), or, for ``default``, the device
type the tensor had.  torch is imported only by processes that already
imported it (a value cannot hold a tensor otherwise).
"""

from __future__ import annotations

import sys
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


__all__ = ["DEVICES", "dumps"]
