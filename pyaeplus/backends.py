"""Which implementation runs an op: ``"auto" | "triton" | "cuda" | "cpu" | "torch"``.

* ``auto`` (default): CUDA tensors -> the backend that :data:`AUTO_CUDA` names for the op
  (Triton for every op today; the other of Triton / CUDA C++ when that one is missing), CPU
  tensors -> the C++ extension ``pyaeplus._C``; the pure-PyTorch ``reference`` only when the
  needed compiled code is missing, with one warning.
* ``triton`` / ``cuda``: CUDA tensors only, through the Triton or the CUDA C++ kernels.
* ``cpu``: CPU tensors only, through ``pyaeplus._C``.
* ``torch``: the reference implementation (``pyaeplus.reference``) on any device.

Set it with ``pyaeplus.backends.set("cuda")``, for a block with
``with pyaeplus.backends.use("torch"): ...``, or with the environment variable
``PYAEPLUS_BACKEND``. Asking for a backend that cannot run the tensors at hand raises a
``RuntimeError`` that says why; nothing silently falls back.
"""

from __future__ import annotations

import contextlib
import builtins
import contextvars
import os
import warnings
from typing import Iterator

import torch

from . import _ext

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch")

_ENV = "PYAEPLUS_BACKEND"

# Which implementation ``auto`` runs CUDA tensors on, per op family: the entry whose key is the
# longest prefix of the op's name (the name the op passes to ``ops._dispatch.run``: "ssim_stats",
# "ssim_stats_backward", "topk_dense", ...); ops no key matches get AUTO_CUDA_DEFAULT. Values are
# "triton" or "cuda". Change an entry only on a measurement: benchmarks/gpu_headline.py prints the
# faster backend per op on the GPU it ran on (its "routing" section) and the line to put here.
AUTO_CUDA_DEFAULT = "triton"
AUTO_CUDA: dict[str, str] = {"ssim": "triton", "topk": "triton", "sparse_decode": "triton", "laplacian": "triton"}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"pyaeplus backend must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def _from_env() -> str:
    raw = os.environ.get(_ENV, "auto")
    try:
        return _check_name(raw)
    except ValueError:
        raise ValueError(f"environment variable {_ENV}={raw!r} is not one of {BACKENDS}") from None


_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("pyaeplus_backend", default=None)


def get() -> str:
    """The backend in force (context, then ``set()``, then ``PYAEPLUS_BACKEND``, then ``auto``)."""
    v = _current.get()
    return v if v is not None else _from_env()


def set(name: str) -> None:  # noqa: A001 - the public name the design asks for
    """Select the backend for this thread / context from now on."""
    _current.set(_check_name(name))


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Select a backend inside a ``with`` block."""
    token = _current.set(_check_name(name))
    try:
        yield
    finally:
        _current.reset(token)


def available() -> dict[str, bool]:
    """Which backends can run on this machine now."""
    gpu = torch.cuda.is_available()
    return {
        "triton": gpu and _ext.triton_available(),
        "cuda": gpu and _ext.cuda_ext() is not None,
        "cpu": _ext.cpu_ext() is not None,
        "torch": True,
    }


_warned: builtins.set[str] = builtins.set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def auto_cuda_choice(op: str | None) -> str:
    """The backend ``auto`` prefers for CUDA tensors of ``op`` (see :data:`AUTO_CUDA`)."""
    keys = [k for k in AUTO_CUDA if op is not None and op.startswith(k)]
    choice = AUTO_CUDA[max(keys, key=len)] if keys else AUTO_CUDA_DEFAULT
    if choice not in ("triton", "cuda"):
        raise ValueError(f"pyaeplus.backends.AUTO_CUDA: the entry for {op!r} must be 'triton' or 'cuda', "
                         f"got {choice!r}")
    return choice


# What each compiled backend needs: the device type it runs, whether it is present, why not
# (looked up at call time).
_RUNS_ON = {"triton": "cuda", "cuda": "cuda", "cpu": "cpu"}
_PRESENT = {"triton": lambda: _ext.triton_available(), "cuda": lambda: _ext.cuda_ext() is not None,
            "cpu": lambda: _ext.cpu_ext() is not None}
_MISSING = {"triton": lambda: "triton is not installed",
            "cuda": lambda: f"pyaeplus._cuda was not built ({_ext.import_error('_cuda')}); reinstall with PYAEPLUS_CUDA=ON",
            "cpu": lambda: f"pyaeplus._C is not built ({_ext.import_error('_C')})"}


def _resolve_auto(device_type: str, op: str | None) -> str:
    if device_type == "cuda":
        first = auto_cuda_choice(op)
        for impl in (first, "cuda" if first == "triton" else "triton"):
            if _PRESENT[impl]():  # the preferred one, else the other (lazy: no needless import)
                return impl
        _warn_once("cuda", "pyaeplus: neither triton nor the CUDA extension is available; "
                   "using the pure-PyTorch reference implementation on CUDA tensors")
        return "torch"
    if device_type == "cpu":
        if _PRESENT["cpu"]():
            return "cpu"
        _warn_once("cpu", "pyaeplus: the C++ extension pyaeplus._C is not built; "
                   "using the pure-PyTorch reference implementation on CPU tensors")
    return "torch"


def resolve(device_type: str, op: str | None = None) -> str:
    """The concrete implementation ("triton", "cuda", "cpu" or "torch") for tensors on
    ``device_type`` under the backend in force; ``op`` (the op's dispatch name) picks the
    preferred CUDA backend of ``auto`` from :data:`AUTO_CUDA`. Raises RuntimeError when it
    cannot run."""
    name = get()
    if name == "torch":
        return "torch"
    if name == "auto":
        return _resolve_auto(device_type, op)
    if device_type != _RUNS_ON[name]:
        if device_type == "cuda":
            raise RuntimeError(f"pyaeplus backend {name!r} runs CPU tensors only, but the inputs are on CUDA; "
                               "use backends.use('auto') or move the tensors")
        if device_type == "cpu":
            raise RuntimeError(f"pyaeplus backend {name!r} runs CUDA tensors only, but the inputs are on the CPU; "
                               "use backends.use('auto') or move the tensors to a GPU")
        raise RuntimeError(f"pyaeplus backend {name!r} cannot run tensors on device type {device_type!r}")
    if not _PRESENT[name]():
        raise RuntimeError(f"pyaeplus backend {name!r} requested but {_MISSING[name]()}")
    return name
