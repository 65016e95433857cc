"""Lazy access to the compiled modules and the integer boundary they take.

The extensions do not link libtorch: Python validates, allocates with ``torch.empty`` and
passes ``data_ptr()`` values, sizes, strides (in elements), a dtype code and, for CUDA, the
stream handle, all as Python ints. Every op calls them through :func:`call` (the module of the
tensors' device, the stream appended on CUDA). "Built with CUDA" (``pyaeplus.build_config()``)
is not "a GPU is present" (``pyaeplus.backends.available()``).

A leaf module: it imports nothing of pyaeplus but the compiled modules themselves.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

import torch

# Must match csrc/common.h `enum DType`.
DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.int64: 4,
    torch.int32: 5,
}


@functools.lru_cache(maxsize=None)
def _import(name: str) -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(f"pyaeplus.{name}"), ""
    except ImportError as e:  # not built, or built for another Python
        return None, str(e)


def cpu_ext() -> ModuleType | None:
    """``pyaeplus._C`` or None when it is not built."""
    return _import("_C")[0]


def cuda_ext() -> ModuleType | None:
    """``pyaeplus._cuda`` or None when it was not built (no CUDA toolkit at build time)."""
    return _import("_cuda")[0]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def dtype_code(t: torch.Tensor) -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"pyaeplus: dtype {t.dtype} cannot cross the compiled boundary") from None


def ptr(t: torch.Tensor | None) -> int:
    """Address of the first element (0 for None: optional arguments)."""
    return 0 if t is None else t.data_ptr()


def stream(t: torch.Tensor) -> int:
    """The current CUDA stream of ``t``'s device as an integer handle."""
    return torch.cuda.current_stream(t.device).cuda_stream


def import_error(name: str) -> str:
    """Why ``pyaeplus.<name>`` (``"_C"`` or ``"_cuda"``) does not import ("" when it does)."""
    return _import(name)[1]


def call(fn: str, like: torch.Tensor, *args):
    """``fn(*args)`` of the compiled module for ``like``'s device: ``_C`` for CPU tensors, ``_cuda``
    for CUDA tensors with the current stream of ``like``'s device appended as the last argument
    (every CUDA launcher takes it last)."""
    if like.device.type == "cuda":
        return getattr(cuda_ext(), fn)(*args, stream(like))
    return getattr(cpu_ext(), fn)(*args)

