"""The inputs of :class:`~pyaeplus.scoring.AnomalyDetector`: validation (scikit-learn's rules for
array-likes), the per-sample shape it remembers, and the standardization fitted on the training data.

Array-likes (numpy arrays, lists, memmaps, pandas frames) and tensors go through
``sklearn.utils.check_array`` (any real dtype; NaN/Inf, complex, sparse, empty and 1-d inputs are
refused with scikit-learn's messages); the standardization is computed in float64 (as PyOD does)
and the model gets one float32 tensor. Datasets
(``torch.utils.data.Dataset``, e.g. ``pyaeplus.data.MemmapDataset`` for data larger than memory) are
streamed: only their sample shape is checked up front, and the standardization is fitted in chunks
and applied per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array
from torch.utils.data import Dataset

from ..runtime.batches import first, read_rows

_CHUNK = 4096  # rows per read when a dataset's statistics are accumulated


def _is_dataset(X) -> bool:
    return isinstance(X, Dataset) and not isinstance(X, (torch.Tensor, np.ndarray))


def check_X(est, X, *, reset: bool):
    """``X`` validated for ``est``: ``(data, n_samples)`` where data is a float64 or float32 tensor
    (N, *sample_shape) (see :func:`standardize`) or the dataset itself. ``reset=True`` (fit) sets ``est.n_features_in_`` and
    ``est.sample_shape_``; otherwise they are checked (ValueError naming X on a mismatch)."""
    if _is_dataset(X):
        n = len(X)
        if n == 0:
            raise ValueError("X is an empty dataset (0 samples)")
        shape = tuple(torch.as_tensor(first(X[0])).shape)
        data = X
    else:
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu()
            X = (X.float() if X.dtype in (torch.bfloat16, torch.float16) else X).numpy()  # numpy has no bf16
        arr = check_array(X, dtype=(np.float64, np.float32), allow_nd=True, ensure_min_samples=1, ensure_min_features=1,
                          input_name="X")
        if not arr.flags.writeable:  # read-only memmaps: torch tensors must own writable memory
            arr = arr.copy()
        n, shape = arr.shape[0], tuple(arr.shape[1:])
        data = torch.from_numpy(arr)
    n_features = math.prod(shape)
    if reset:
        est.n_features_in_, est.sample_shape_ = n_features, shape
    elif n_features != est.n_features_in_:
        raise ValueError(f"X has {n_features} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input")
    elif shape != est.sample_shape_ and len(shape) != 1:
        raise ValueError(f"X has samples of shape {shape}, but {type(est).__name__} was fitted on samples of shape "
                         f"{est.sample_shape_} (or pass them flattened, (N, {n_features}))")
    return data, n


def fit_standardizer(data) -> StandardScaler:
    """Per-feature mean and standard deviation of the training data (scikit-learn's StandardScaler:
    population std, features of zero variance keep scale 1); datasets in chunks of rows."""
    sc = StandardScaler()
    if isinstance(data, torch.Tensor):
        return sc.fit(data.reshape(data.shape[0], -1).numpy())  # float64 accumulators for float32 data too
    for idx in torch.arange(len(data)).split(_CHUNK):
        x = read_rows(data, idx)
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()  # numpy has no bf16
        sc.partial_fit(x.reshape(idx.numel(), -1).numpy())
    return sc


def standardize(sc: StandardScaler | None, data, sample_shape: tuple[int, ...]):
    """What the model sees: ``data`` standardized with the fitted scaler (``sc=None``: as it is), as a
    float32 tensor (computed in float64, chunk by chunk) or a dataset view that applies it per batch."""
    if not isinstance(data, torch.Tensor):
        return data if sc is None else Standardized(data, sc, sample_shape)
    if sc is None:
        return data.float()
    flat = data.reshape(data.shape[0], -1).numpy()
    out = np.empty(flat.shape, np.float32)
    for lo in range(0, flat.shape[0], _CHUNK):
        out[lo:lo + _CHUNK] = sc.transform(flat[lo:lo + _CHUNK].astype(np.float64, copy=False))
    return torch.from_numpy(out).reshape(data.shape)


class Standardized(Dataset):
    """A dataset seen through a fitted standardization: ``get_batch`` reads the rows of the wrapped
    dataset and returns ``((x - mean) / scale, index)``."""

    def __init__(self, dataset, scaler: StandardScaler, sample_shape: tuple[int, ...]):
        self.dataset = dataset
        self.mean = torch.as_tensor(scaler.mean_, dtype=torch.float64)
        self.scale = torch.as_tensor(scaler.scale_, dtype=torch.float64)
        self.sample_shape = tuple(sample_shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = read_rows(self.dataset, idx).double().reshape(idx.numel(), -1)
        return ((x - self.mean) / self.scale).float().reshape(idx.numel(), *self.sample_shape), idx

    def __getitem__(self, i: int):
        x, idx = self.get_batch([int(i)])
        return x[0], idx[0]
