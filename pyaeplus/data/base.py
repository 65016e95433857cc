"""In-memory datasets with a batched fast path.

Every dataset here is a ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs of a float
tensor and an int64 label, and which also offers ``get_batch(indices)``: one vectorized gather
instead of ``len(indices)`` Python calls and a collate. ``pyaeplus.train.fit`` and the scoring
engine use ``get_batch`` when a dataset has it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..runtime.batches import first, read_rows

__all__ = ["ArrayDataset", "WithIndex", "as_dataset"]


def _as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.as_tensor(a)


class ArrayDataset(Dataset):
    """Samples held in one array, converted to float per batch.

    Args:
        data: (N, ...) tensor or array of samples; integer data is kept as is (e.g. uint8 images,
            1 byte per pixel) and converted on access.
        targets: (N,) labels (int64), or None (labels read as -1).
        scale: multiplier applied after the float conversion (1/255 for uint8 images).
        sample_shape: shape each sample is viewed as on access (e.g. (1, 28, 28)); None keeps it.
        transform: optional callable applied to the float batch (B, *sample_shape) (and to single
            samples with a leading batch dim of 1), e.g. a fitted ``MinMaxScaler``.
        dtype: float dtype of the returned samples.

    Items are ``(x, y)`` with ``x`` of shape ``sample_shape`` and ``y`` an int64 scalar tensor.
    """

    def __init__(self, data, targets=None, *, scale: float = 1.0, sample_shape: Sequence[int] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float32):
        self.data = _as_tensor(data)
        if self.data.dim() < 1 or self.data.shape[0] == 0:
            raise ValueError(f"data must hold at least one sample, got shape {tuple(self.data.shape)}")
        n = self.data.shape[0]
        if targets is None:
            self.targets = torch.full((n,), -1, dtype=torch.int64)
        else:
            self.targets = _as_tensor(targets).to(torch.int64).reshape(-1)
            if self.targets.shape[0] != n:
                raise ValueError(f"targets must have one label per sample ({n}), got {self.targets.shape[0]}")
        self.scale = float(scale)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else tuple(self.data.shape[1:])
        if int(np.prod(self.sample_shape)) != int(np.prod(self.data.shape[1:])):
            raise ValueError(f"sample_shape {self.sample_shape} does not match the samples' shape "
                             f"{tuple(self.data.shape[1:])}")
        self.transform = transform
        self.dtype = dtype

    def __len__(self) -> int:
        return self.data.shape[0]

    def _convert(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(self.dtype)
        if self.scale != 1.0:
            x = x * self.scale
        x = x.reshape((raw.shape[0],) + self.sample_shape)
        if self.transform is not None:
            x = self.transform(x)
        return x

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (B, *sample_shape) float, y (B,) int64)`` for a 1-d index tensor/array/list."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        # index_select: the same rows as data[idx] at a third of the per-call cost (small batches)
        return self._convert(self.data.index_select(0, idx)), self.targets.index_select(0, idx)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch([int(i)])
        return x[0], y[0]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples at once: ``(x (N, *sample_shape) float, y (N,))`` (in memory)."""
        return self._convert(self.data), self.targets

    def subset(self, mask_or_indices) -> "ArrayDataset":
        """A dataset over the selected rows (bool mask or indices), sharing scale and transform."""
        sel = torch.as_tensor(mask_or_indices)
        if sel.dtype == torch.bool:
            sel = sel.nonzero().reshape(-1)
        return ArrayDataset(self.data[sel], self.targets[sel], scale=self.scale, sample_shape=self.sample_shape,
                            transform=self.transform, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, sample_shape={self.sample_shape})"


class WithIndex(Dataset):
    """Yields ``(x, index)`` instead of ``(x, label)``: the batch format of models whose loss needs to
    know which rows of the training set it sees (``LaplacianAE`` takes the sub-graph of the batch).

    Args:
        dataset: a dataset (items ``x`` or ``(x, ...)``), an ``ArrayDataset``, or a tensor of samples.
    """

    def __init__(self, dataset):
        self.dataset = as_dataset(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return first(self.dataset[i]), torch.tensor(int(i), dtype=torch.int64)

    def get_batch(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return read_rows(self.dataset, idx), idx


def as_dataset(data):
    """A tensor/array becomes an ``ArrayDataset`` (float data kept as is); datasets pass through."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        t = _as_tensor(data)
        if not t.is_floating_point():
            raise TypeError(f"data given as a tensor/array must be floating point, got {t.dtype} "
                            "(wrap integer images in ArrayDataset(data, scale=1/255))")
        return ArrayDataset(t, dtype=t.dtype)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return data
    raise TypeError(f"data must be a torch Dataset, a tensor or a numpy array, got {type(data).__name__}")
