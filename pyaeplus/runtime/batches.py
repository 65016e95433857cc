"""Batches as ``train.fit``, ``scoring.score``, the estimators and the models see them.

A *batch* is a tensor ``x``, a tuple/list ``(x, y_or_idx, ...)`` or a dict with ``"x"``: :func:`first`
and :func:`split_batch` unpack it. :func:`read_batch` and :func:`read_rows` read the rows ``idx`` of a
dataset (through ``get_batch`` when the dataset has one: one read per batch), and
:class:`BatchDataset` makes "batch i" the item i of a dataset, so that a ``DataLoader`` with
``batch_size=None`` lets its worker processes fetch whole batches.

Nothing here imports the rest of pyaeplus.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate, default_convert

__all__ = ["first", "split_batch", "read_batch", "read_rows", "BatchDataset"]


def split_batch(batch) -> tuple[torch.Tensor, Any]:
    """``batch`` may be a tensor, or a tuple/list whose first element is the input (the rest:
    labels or node indices), or a dict with key ``"x"``. Returns (x, second element or None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        if "x" not in batch:
            raise ValueError(f"batch dict must have key 'x', got keys {sorted(batch)}")
        return batch["x"], batch.get("idx", batch.get("y"))
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"batch must be a tensor, a non-empty (x, ...) tuple/list or a dict, got {type(batch).__name__}")


def first(batch):
    """The input part of a batch or a dataset item: ``x`` of ``(x, ...)``, ``batch["x"]`` (else the
    first value) of a dict, anything else as it is."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        return batch["x"] if "x" in batch else next(iter(batch.values()))
    return batch


def read_batch(ds, idx: torch.Tensor):
    """The rows ``idx`` (int64 (B,)) of ``ds`` collated as a DataLoader would: ``ds.get_batch(idx)``
    when it exists (NumPy parts converted to tensors), else ``default_collate`` of the items."""
    if hasattr(ds, "get_batch"):
        b = ds.get_batch(idx)
        if isinstance(b, torch.Tensor) or (isinstance(b, (tuple, list)) and
                                           all(isinstance(e, torch.Tensor) for e in b)):
            return b
        return default_convert(b)  # what the DataLoader would have done
    return default_collate([ds[int(j)] for j in idx])


def read_rows(ds, idx: torch.Tensor) -> torch.Tensor:
    """The inputs only of the rows ``idx`` of ``ds``: (B, ...) tensor (labels are not read or collated)."""
    if hasattr(ds, "get_batch"):
        return torch.as_tensor(first(ds.get_batch(idx)))
    return torch.stack([_tensor(first(ds[int(j)])) for j in idx])


def _tensor(x) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else torch.as_tensor(x)


class BatchDataset(Dataset):
    """Item i is batch i (the rows ``batches[i]``, int64), already read: :func:`read_batch`, or
    :func:`read_rows` with ``inputs_only``. Run the DataLoader with ``batch_size=None``."""

    def __init__(self, dataset, batches: list[torch.Tensor], *, inputs_only: bool = False):
        self.dataset, self.batches, self.inputs_only = dataset, batches, inputs_only

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        idx = self.batches[i]
        return read_rows(self.dataset, idx) if self.inputs_only else read_batch(self.dataset, idx)


def loader(dataset, batches: list[torch.Tensor], *, num_workers: int = 0, pin: bool = False,
           inputs_only: bool = False, prefetch_factor: int | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over :class:`BatchDataset` in batch order, with its own generator (it never draws
    from the global RNG, so seeded runs stay reproducible whatever the number of workers)."""
    return torch.utils.data.DataLoader(BatchDataset(dataset, batches, inputs_only=inputs_only), batch_size=None,
                                       shuffle=False, num_workers=num_workers, pin_memory=pin,
                                       persistent_workers=False, generator=torch.Generator(),
                                       prefetch_factor=prefetch_factor if num_workers else None)
