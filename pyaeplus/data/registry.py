"""Datasets by name, for the command line and config files: ``open_dataset("mnist:~/data")``."""

from __future__ import annotations

from typing import Any

from .arrays import MemmapDataset
from .idx import load_idx_dataset
from .images import ImageFolder
from .mvtec import mvtec_ad
from .series import csv_series, ecg5000, ucr
from .transforms import GlobalContrast, MinMaxScaler

__all__ = ["DATASET_KINDS", "open_dataset", "normalize"]

DATASET_KINDS = ("mnist", "fashion-mnist", "kmnist", "ecg5000", "ucr", "csv", "images", "npy", "mvtec")


def open_dataset(spec: str, *, split: str = "train", **options: Any):
    """Open a dataset from ``"<kind>:<path>"``.

    Args:
        spec: ``mnist:ROOT``, ``fashion-mnist:ROOT``, ``kmnist:ROOT`` (IDX, verified; options
            ``download``, ``classes``), ``ecg5000:ROOT``, ``ucr:FILE``, ``csv:FILE`` (option
            ``label_column``), ``images:DIR`` (options ``mode``, ``size``), ``npy:FILE`` (options
            ``targets``, ``scale``, ``sample_shape``), ``mvtec:DIR`` (one category folder in the MVTec AD
            layout, with ground-truth masks; options ``size``, ``channels``, ``resample``).
        split: ``"train"``/``"test"`` for the kinds that have splits (others ignore it).
        **options: passed to the loader.

    Returns:
        The dataset (items ``(x, y)``).
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"data must be '<kind>:<path>' with kind in {DATASET_KINDS}, got {spec!r}")
    kind, path = spec.split(":", 1)
    kind = kind.lower().replace("_", "-")
    if kind in ("mnist", "fashion-mnist", "kmnist"):
        return load_idx_dataset(kind, path, split, **options)
    if kind == "ecg5000":
        return ecg5000(path, split, **options)
    if kind == "ucr":
        return ucr(path, **options)
    if kind == "csv":
        return csv_series(path, **options)
    if kind == "images":
        return ImageFolder(path, **options)
    if kind == "npy":
        return MemmapDataset(path, **options)
    if kind in ("mvtec", "mvtec-ad"):
        return mvtec_ad(path, split, **options)
    raise ValueError(f"data kind must be one of {DATASET_KINDS}, got {kind!r}")


def normalize(kind: str | None, train, *others):
    """Attach a normalization fitted on ``train`` to ``train`` and each of ``others`` (their
    ``transform``): ``"minmax"`` (global min/max of the training data), ``"gcn"`` (per-sample
    global contrast, L1), ``"gcn+minmax"`` (both, Deep SVDD's preprocessing), or None.

    Returns:
        The transform (or None).
    """
    if kind is None or kind == "none":
        return None
    if kind not in ("minmax", "gcn", "gcn+minmax"):
        raise ValueError(f"normalize must be 'minmax', 'gcn', 'gcn+minmax' or None, got {kind!r}")
    for ds in (train, *others):
        # batch transforms: only the datasets that apply ``transform`` to (B, ...) batches
        if not (hasattr(ds, "transform") and hasattr(ds, "get_batch")):
            raise TypeError(f"normalize applies to in-memory/memmap datasets, not {type(ds).__name__}")
    if kind == "gcn":
        t = GlobalContrast("l1")
    else:
        gcn = GlobalContrast("l1") if kind == "gcn+minmax" else None
        train.transform = gcn
        scaler = MinMaxScaler().fit(train)
        t = scaler if gcn is None else _Chain(gcn, scaler)
    for ds in (train, *others):
        ds.transform = t
    return t


class _Chain:
    def __init__(self, *fs):
        self.fs = fs

    def __call__(self, x):
        for f in self.fs:
            x = f(x)
        return x
