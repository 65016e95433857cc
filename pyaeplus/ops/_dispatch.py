"""Backend selection inside a custom op's device kernel.

The dispatcher picks the device (the op's CUDA body or its ``register_kernel("cpu")``);
inside, ``run`` picks the implementation for that device from the backend in force
(``pyaeplus.backends``). Each implementation is a zero-argument callable so that only the
chosen one imports anything (Triton is imported only when a Triton kernel runs).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from .. import backends
from .._amp import autocast_off

T = TypeVar("T")


def run(op: str, device: torch.device, *, triton: Callable[[], T] | None = None,
        cuda: Callable[[], T] | None = None, cpu: Callable[[], T] | None = None,
        torch_: Callable[[], T] | None = None) -> T:
    impl = backends.resolve(device.type, op)
    fn = {"triton": triton, "cuda": cuda, "cpu": cpu, "torch": torch_}[impl]
    if fn is None:
        raise RuntimeError(f"pyaeplus::{op} has no {impl!r} implementation")
    # Below the op, inputs arrive in the dtypes the op was called with: autocast must not recast
    # what the implementations compute (the torch reference's convolutions accumulate in float32).
    with autocast_off(device):
        if device.type == "cuda":
            # Kernels launch on the current device; make it the inputs' device.
            with torch.cuda.device(device):
                return fn()
        return fn()
