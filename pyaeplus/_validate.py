"""Input checks shared by the public functions: every error names the argument and says
what was expected, and all of them run before any kernel."""

from __future__ import annotations

import numbers
from typing import Iterable

import torch

from . import config

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return torch._dynamo.is_compiling()


def tensor(name: str, t, *, ndim: int | Iterable[int] | None = None, min_ndim: int | None = None,
           dtypes: Iterable[torch.dtype] | None = FLOATING, nonempty: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in dims:
            raise ValueError(f"{name} must be {' or '.join(f'{d}-d' for d in dims)}, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def wants_data_checks(check_finite=None) -> bool:
    """Whether the value checks that read data tensors run: ``check_finite`` (a per-call
    override) or ``pyaeplus.config.check_finite`` is True, and ``torch.compile`` is not tracing.
    The default ``"auto"`` reads no data (see ``pyaeplus.config``)."""
    mode = config.check_finite if check_finite is None else config.check_mode(check_finite)
    return mode is True and not _compiling()


def finite(name: str, t: torch.Tensor, check_finite=None) -> None:
    """Reject NaN/Inf in ``t`` when :func:`wants_data_checks` (explicit mode only: one extra
    read of ``t`` and, on CUDA, one host sync)."""
    if not wants_data_checks(check_finite) or t.numel() == 0 or not t.is_floating_point() \
            or t.device.type == "meta":
        return
    finite_now(name, t)


def finite_now(name: str, t: torch.Tensor) -> None:
    """The NaN/Inf check itself, whatever the mode (for small host-side arguments)."""
    # Fast path, one reduction without a mask allocation: any NaN/Inf makes the sum non-finite,
    # so a finite sum proves every element finite. A non-finite sum (or an overflow of finite
    # values) falls through to the exact count.
    acc = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
    if bool(torch.isfinite(acc)):
        return
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} Inf value(s); pyaeplus rejects non-finite "
                         "inputs (pyaeplus.config.check_finite=True checks every input, False none)")


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    dev = items[0][1].device
    for k, v in items[1:]:
        if v.device != dev:
            raise ValueError(f"{k} is on {v.device} but {items[0][0]} is on {dev}; all tensors must share a device")
    return dev


def integer(name: str, v, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point():
            v = int(v)
        else:
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def number(name: str, v, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def choice(name: str, v, options: Iterable[str]) -> str:
    options = tuple(options)
    if v not in options:
        raise ValueError(f"{name} must be one of {options}, got {v!r}")
    return v


def not_meta(name: str, t) -> None:
    """A meta tensor (a shape without data) gets a clear error instead of torch's ``.item()`` one."""
    if isinstance(t, torch.Tensor) and t.is_meta:
        raise ValueError(f"{name} is a meta tensor (a shape without data) and cannot be computed on; create it on a "
                         "real device ('cpu', 'cuda'), e.g. a model built under torch.device('meta') with "
                         "model.to_empty(device=...) followed by its initialization")
