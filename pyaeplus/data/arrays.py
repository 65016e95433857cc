"""Arrays on disk, larger than memory: ``.npy`` files opened as memory maps, and raw binary
memmaps with a given shape and dtype. Only the rows of a batch are read."""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..runtime.files import atomic_path

__all__ = ["MemmapDataset", "write_npy"]


class MemmapDataset(Dataset):
    """Rows of an on-disk array, read on demand (the OS page cache does the caching).

    Args:
        path: a ``.npy`` file (opened with ``np.load(mmap_mode="r")``), or a raw binary file, which
            then needs ``shape`` and ``dtype``.
        targets: (N,) labels: an array, or the path of a ``.npy`` file; None gives -1 labels.
        shape: (N, ...) for raw files (None for ``.npy``).
        dtype: numpy dtype for raw files.
        offset: bytes to skip at the start of a raw file.
        scale: multiplier after the float conversion (1/255 for uint8 images).
        sample_shape: shape each row is viewed as (e.g. (1, 28, 28)); None keeps the stored shape.
        transform: optional callable on float batches (B, *sample_shape).

    Items are ``(x float32, y int64)``; ``get_batch(indices)`` reads a batch in one sorted pass
    over the file (sequential reads) and returns it in the requested order.
    """

    def __init__(self, path: str | os.PathLike, targets=None, *, shape: Sequence[int] | None = None,
                 dtype=None, offset: int = 0, scale: float = 1.0, sample_shape: Sequence[int] | None = None,
                 transform=None):
        self.path = pathlib.Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} not found")
        if self.path.suffix == ".npy":
            if shape is not None or dtype is not None:
                raise ValueError("shape and dtype come from the .npy header; pass them only for raw files")
            try:
                self.array = np.load(self.path, mmap_mode="r")
            except ValueError as e:
                raise ValueError(f"{self.path}: not a valid .npy file ({e})") from e
        else:
            if shape is None or dtype is None:
                raise ValueError(f"{self.path} is a raw file: shape and dtype are required")
            dtype = np.dtype(dtype)
            need = int(np.prod(shape)) * dtype.itemsize + int(offset)
            have = self.path.stat().st_size
            if have < need:
                raise ValueError(f"{self.path} holds {have} bytes, shape {tuple(shape)} of {dtype} from offset "
                                 f"{offset} needs {need}; the file is truncated or the shape is wrong")
            self.array = np.memmap(self.path, dtype=dtype, mode="r", shape=tuple(shape), offset=int(offset))
        if self.array.ndim < 1 or self.array.shape[0] == 0:
            raise ValueError(f"{self.path}: the array must hold at least one row, shape {self.array.shape}")
        n = self.array.shape[0]
        if targets is None:
            self.targets = torch.full((n,), -1, dtype=torch.int64)
        else:
            t = np.load(targets) if isinstance(targets, (str, os.PathLike)) else np.asarray(targets)
            self.targets = torch.from_numpy(np.asarray(t, dtype=np.int64).reshape(-1))
            if self.targets.shape[0] != n:
                raise ValueError(f"targets must have one label per row ({n}), got {self.targets.shape[0]}")
        self.scale = float(scale)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else tuple(self.array.shape[1:])
        if int(np.prod(self.sample_shape)) != int(np.prod(self.array.shape[1:])):
            raise ValueError(f"sample_shape {self.sample_shape} does not match the rows' shape {self.array.shape[1:]}")
        self.transform = transform

    @property
    def data(self) -> np.ndarray:
        """The memory-mapped array (N, ...), read-only."""
        return self.array

    def __len__(self) -> int:
        return self.array.shape[0]

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(torch.as_tensor(indices, dtype=torch.int64))
        order = np.argsort(idx, kind="stable")
        rows = np.empty((idx.shape[0],) + self.array.shape[1:], dtype=self.array.dtype)
        rows[order] = self.array[idx[order]]  # sorted gather: sequential reads on disk
        x = torch.from_numpy(rows).to(torch.float32)
        if self.scale != 1.0:
            x = x * self.scale
        x = x.reshape((idx.shape[0],) + self.sample_shape)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[torch.from_numpy(idx)]

    def __getitem__(self, i: int):
        x, y = self.get_batch([int(i)])
        return x[0], y[0]

    def __repr__(self) -> str:
        return f"MemmapDataset({str(self.path)!r}, shape={self.array.shape}, dtype={self.array.dtype})"


def write_npy(path: str | os.PathLike, chunks, *, shape: Sequence[int], dtype) -> pathlib.Path:
    """Write a ``.npy`` larger than memory from an iterable of row chunks (arrays of shape (n_i, ...)),
    into a temporary file renamed atomically at the end.

    Args:
        path: destination ``.npy``.
        chunks: iterable of arrays/tensors whose rows add up to ``shape[0]``.
        shape: full (N, ...) shape.
        dtype: numpy dtype.

    Returns:
        The path written.
    """
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
        pos = 0
        for c in chunks:
            c = c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
            if pos + c.shape[0] > shape[0]:
                raise ValueError(f"chunks hold more than shape[0]={shape[0]} rows")
            out[pos:pos + c.shape[0]] = c
            pos += c.shape[0]
        if pos != shape[0]:
            raise ValueError(f"chunks hold {pos} rows, shape[0] is {shape[0]}")
        out.flush()
        del out
    return path
