"""Mixed-precision helpers shared by the layers (torch only, no pyaeplus imports)."""

from __future__ import annotations

import contextlib

import torch

HALF = (torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every kernel and reference accumulates inputs of ``dtype`` in: float64 stays
    float64 (so that ``gradcheck`` through the kernels is meaningful), everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_on(device: torch.device) -> bool:
    """Whether ``torch.autocast`` is active for ``device``'s type (cpu/cuda; False elsewhere)."""
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def autocast_off(device: torch.device):
    """A context with autocast off for ``device``, so that what runs inside computes in the
    dtypes it is given (the float32 accumulations of the kernels and references, random Fourier
    features); a no-op when autocast is not on."""
    if autocast_on(device):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def loss_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a loss computed from inputs of ``dtype`` returns: float32 for half inputs under
    autocast (as autocast's float32-list losses, e.g. ``mse_loss``), else ``dtype`` itself."""
    return torch.float32 if dtype in HALF and autocast_on(device) else dtype
