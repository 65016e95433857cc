"""Time series: UCR archive text files (label then values, whitespace or comma separated),
generic CSV with a label column, and ECG5000."""

from __future__ import annotations

import csv
import os
import pathlib

import numpy as np
import torch

from ._files import md5sum
from .base import ArrayDataset

__all__ = ["SeriesDataset", "read_ucr", "ucr", "csv_series", "ecg5000"]


class SeriesDataset(ArrayDataset):
    """Series of equal length in memory: items ``(x (T,) float32, y int64)``; ``.data`` is (N, T)
    float32, ``.targets`` (N,) int64 (the file's labels)."""

    def __init__(self, values: np.ndarray, labels: np.ndarray | None, *, name: str = "", transform=None):
        super().__init__(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)),
                         None if labels is None else torch.from_numpy(labels.astype(np.int64)),
                         transform=transform)
        self.name = name

    def __repr__(self) -> str:
        return f"SeriesDataset({self.name!r}, n={len(self)}, length={self.data.shape[1]})"


def _parse_labels(col: np.ndarray, path) -> np.ndarray:
    if not np.all(np.isfinite(col)) or not np.all(col == np.round(col)):
        raise ValueError(f"{path}: the label column must hold integers, found e.g. "
                         f"{col[~(col == np.round(col))][:3].tolist() or col[~np.isfinite(col)][:3].tolist()}")
    return col.astype(np.int64)


def read_ucr(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a UCR-format file: one series per line, the class label first, then the values,
    separated by whitespace, commas or tabs (the 2015 ``.txt`` and 2018 ``.tsv`` layouts).

    Returns:
        ``(values (N, T) float32, labels (N,) int64)``.

    Raises:
        ValueError: rows of different lengths, non-numeric or non-finite fields, non-integer labels;
            the message names the file and the line.
    """
    path = pathlib.Path(path)
    rows = []
    with open(path, "r") as f:
        for lineno, line in enumerate(f, 1):
            line = line.replace(",", " ").strip()
            if not line:
                continue
            try:
                row = np.array(line.split(), dtype=np.float64)
            except ValueError as e:
                raise ValueError(f"{path}, line {lineno}: not a number ({e})") from None
            if rows and row.shape[0] != rows[0].shape[0]:
                raise ValueError(f"{path}, line {lineno}: {row.shape[0]} fields, the first line has "
                                 f"{rows[0].shape[0]}; the file is truncated or not a UCR series file")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no data")
    arr = np.stack(rows)
    if arr.shape[1] < 2:
        raise ValueError(f"{path}: each line needs a label and at least one value")
    values = arr[:, 1:]
    if not np.all(np.isfinite(values)):
        bad = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise ValueError(f"{path}: non-finite value in data row {bad}")
    return values.astype(np.float32), _parse_labels(arr[:, 0], path)


def ucr(path: str | os.PathLike, *, transform=None) -> SeriesDataset:
    """A UCR-format file as a ``SeriesDataset`` (see ``read_ucr``)."""
    values, labels = read_ucr(path)
    return SeriesDataset(values, labels, name=pathlib.Path(path).stem, transform=transform)


def csv_series(path: str | os.PathLike, *, label_column: int | str | None = -1, delimiter: str = ",",
               header: bool | None = None, transform=None) -> SeriesDataset:
    """A CSV of series, one per row, with an optional label column (e.g. the 4,998-row ``ecg.csv``,
    whose last column is the label).

    Args:
        path: the file.
        label_column: index (negative counts from the end) or header name of the label column;
            None when the file has no labels (labels read as -1).
        delimiter: field separator.
        header: whether the first row is a header; None detects it (a first row that is not all numbers).
        transform: optional callable on float batches (B, T).

    Returns:
        SeriesDataset with ``.data`` (N, T) float32 and ``.targets`` (N,) int64.
    """
    path = pathlib.Path(path)
    with open(path, "r", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no data")

    def numeric(r):
        try:
            [float(c) for c in r]
            return True
        except ValueError:
            return False

    names = None
    if header is None:
        header = not numeric(rows[0])
    if header:
        names, rows = [c.strip() for c in rows[0]], rows[1:]
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(f"{path}, data row {i}: {len(r)} fields, expected {width}")
    try:
        arr = np.array(rows, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: not all fields are numbers ({e})") from None
    labels = None
    if label_column is not None:
        if isinstance(label_column, str):
            if names is None or label_column not in names:
                raise ValueError(f"label_column {label_column!r} is not a header name of {path} (header: {names})")
            label_column = names.index(label_column)
        if not -width <= label_column < width:
            raise ValueError(f"label_column must be in [{-width}, {width - 1}], got {label_column}")
        label_column %= width
        labels = _parse_labels(arr[:, label_column], path)
        arr = np.delete(arr, label_column, axis=1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: non-finite values in the data")
    return SeriesDataset(arr.astype(np.float32), labels, name=path.stem, transform=transform)


# ECG5000 (UCR archive 2015 text layout): rows and published checksums.
_ECG5000 = {
    "train": ("ECG5000_TRAIN.txt", 500, "a7ec9b6577e0cc897dca3adaaa0699ed"),
    "test": ("ECG5000_TEST.txt", 4500, None),  # no checksum at hand: structure is verified instead
}


def ecg5000(root: str | os.PathLike, split: str = "train", *, verify: bool = True, transform=None) -> SeriesDataset:
    """ECG5000 from the UCR archive: 140-sample heartbeats, labels 1..5, class 1 the normal beat.

    Args:
        root: folder holding ``ECG5000_TRAIN.txt`` / ``ECG5000_TEST.txt``, or its parent with an
            ``ecg5000/`` sub-folder.
        split: ``"train"`` (500 rows) or ``"test"`` (4,500 rows).
        verify: check the row count, the series length (140), the labels (1..5) and, where a
            checksum is known, the MD5.
        transform: optional callable on float batches (B, 140).

    Returns:
        SeriesDataset; ``.targets`` holds the labels 1..5 and ``.normal`` the (N,) bool mask of class 1.
    """
    if split not in _ECG5000:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    fname, rows, md5 = _ECG5000[split]
    root = pathlib.Path(root).expanduser()
    path = next((d / fname for d in (root / "ecg5000", root / "ECG5000", root) if (d / fname).exists()), None)
    if path is None:
        raise FileNotFoundError(f"{fname} not found under {root} (nor {root / 'ecg5000'})")
    if verify and md5 is not None:
        got = md5sum(path)
        if got != md5:
            raise ValueError(f"checksum mismatch for {path}: MD5 is {got}, the published MD5 is {md5}; "
                             "the file is corrupt or truncated")
    ds = ucr(path, transform=transform)
    if verify:
        n, t = ds.data.shape
        labels = set(ds.targets.unique().tolist())
        if n != rows or t != 140 or not labels <= {1, 2, 3, 4, 5}:
            raise ValueError(f"{path}: expected {rows} rows of 140 samples with labels 1..5, got {n} rows of {t} "
                             f"with labels {sorted(labels)}")
    ds.name = f"ecg5000-{split}"
    ds.normal = ds.targets == 1
    return ds
