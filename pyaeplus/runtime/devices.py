"""Device arguments as users spell them, checked before anything moves."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device, name: str = "device") -> torch.device:
    """``device`` (a string or ``torch.device``, not ``"auto"``) as a ``torch.device``.

    Raises:
        ValueError: it does not parse, or it is a CUDA device and CUDA is not available here (torch
            would raise an AssertionError only at the first transfer).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name} must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got {device!r}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {device!r} but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev
