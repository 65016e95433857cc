"""Host-read guard for the training and scoring loops (their ``sync_debug`` option).

A device-to-host synchronisation inside a training step stalls the GPU's queue; on a small model it
costs more than the step. ``Guard(mode, device)`` brackets the steps of ``pyaeplus.train.fit`` and
the batches of ``pyaeplus.scoring.score``:

* on CUDA it sets ``torch.cuda.set_sync_debug_mode(mode)``, so every synchronising call inside the
  bracket (``.item()``, ``bool(t)``, a blocking copy, ``nonzero`` ...) warns or raises;
* on other devices (where nothing synchronises) it flags the calls that would synchronise on a GPU:
  host reads of a tensor (``item``, ``__bool__``, ``__float__``, ``__int__``, ``tolist``, ``cpu``,
  ``numpy`` ...), through a ``TorchFunctionMode``. The optimizer's step runs outside the check there
  (:meth:`Guard.optimizer_step`): optimizers keep their step counters as host tensors on every
  device and read them with ``.item()``, which is not a device synchronisation.

The loops pause the guard (:meth:`Guard.paused`) at their log points, where they read results on
purpose, and around user callbacks.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

MODES = (None, "warn", "error")

# Tensor methods that read values on the host: each synchronises with the device on a GPU.
HOST_READS = frozenset({"item", "__bool__", "__float__", "__int__", "__index__", "__complex__", "__format__",
                        "tolist", "cpu", "numpy", "__array__", "__contains__", "nonzero", "masked_select",
                        "unique", "unique_consecutive"})


_NULL = contextlib.nullcontext()  # reusable: the unchecked step enters it every time


class SyncError(RuntimeError):
    """A host read inside a step guarded with ``sync_debug="error"`` (CPU emulation of CUDA's check)."""


class _HostReads(TorchFunctionMode):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            msg = (f"Tensor.{name}() reads a tensor on the host inside a step checked by sync_debug; on a GPU this "
                   "synchronises with the device")
            if self.mode == "error":
                raise SyncError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return func(*args, **(kwargs or {}))


class Guard:
    """Context manager: the steps inside it are checked for host synchronisations.

    Args:
        mode: ``None`` (no check: the manager does nothing), ``"warn"`` or ``"error"``.
        device: the device the loop runs on.
    """

    def __init__(self, mode: str | None, device: torch.device):
        if mode not in MODES:
            raise ValueError(f"sync_debug must be None, 'warn' or 'error', got {mode!r}")
        self.mode, self.cuda = mode, device.type == "cuda"
        self._active: _HostReads | None = None
        self._prev = None

    def __enter__(self) -> "Guard":
        if self.mode is None:
            return self
        if self.cuda:
            self._prev = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(self.mode)
        else:
            self._active = _HostReads(self.mode)
            self._active.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.mode is None:
            return
        if self.cuda:
            torch.cuda.set_sync_debug_mode(self._prev)
        elif self._active is not None:
            active, self._active = self._active, None
            active.__exit__(*exc)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the check for the duration of the block (log points, callbacks)."""
        if self.mode is None:
            yield
            return
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()

    def optimizer_step(self):
        """The optimizer's step: checked on CUDA, not by the CPU emulation (see the module docstring)."""
        return self.paused() if self.mode is not None and not self.cuda else _NULL
