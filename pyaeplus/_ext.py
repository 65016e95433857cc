"""Lazy access to the compiled modules and the integer boundary they take.

The extensions do not link libtorch: Python validates, allocates with ``torch.empty`` and
passes ``data_ptr()`` values, sizes, strides (in elements), a dtype code and, for CUDA, the
stream handle, all as Python ints. "Built with CUDA" (``build_config()``) is not "a GPU is
present" (``pyaeplus.backends.available()``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import platform
import sys
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


def _version(mod: str) -> str | None:
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return None


def build_config() -> dict:
    """What was compiled, what can run here, and the versions involved."""
    from . import __version__, backends

    c, c_err = _import("_C")
    cu, cu_err = _import("_cuda")
    cfg: dict = {
        "pyaeplus": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton") if triton_available() else None,
        "numpy": _version("numpy"),
        "faiss": _version("faiss") if importlib.util.find_spec("faiss") else None,
        "cpu_extension": c.build_config() if c is not None else {"error": c_err},
        "cuda_extension": cu.build_config() if cu is not None else {"error": cu_err},
    }
    if cu is not None:
        n, err = cu.device_count()
        cfg["cuda_extension"]["devices_seen"] = n
        if err:
            cfg["cuda_extension"]["device_error"] = err
    gpu = torch.cuda.is_available()
    cfg["gpu_present"] = gpu
    cfg["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if gpu else []
    cfg["backends_available"] = backends.available()
    cfg["backend"] = backends.get()
    cfg["python_executable"] = sys.executable
    return cfg
