"""Data named by one string, as the command line and run configs name it.

* :func:`open_spec`: ``"<kind>:<path>"`` (``mnist:ROOT``, ``npy:FILE``, ``images:DIR`` ...) or the
  path of a ``.npy`` file, opened with :func:`pyaeplus.data.open_dataset`.
* :func:`parse_options`: ``KEY=VALUE`` strings (values read as JSON when they parse) -> a dict.
* :func:`labels_of`: ``"data"`` (the dataset's own labels) or a ``.npy`` of labels, one per sample.
* :func:`samples_of`: every sample of a dataset (or an array file) as one float32 tensor (N, ...).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from .registry import open_dataset


def json_value(text: str):
    """``text`` read as JSON (``3``, ``[0, 1]``, ``true`` ...), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items, *, name: str = "--data-option") -> dict:
    """``["size=32", "classes=[0,1]"]`` -> ``{"size": 32, "classes": [0, 1]}``.

    Raises:
        ValueError naming ``name`` when an item has no ``=``.
    """
    opts = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{name} must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k] = json_value(v)
    return opts


def open_spec(spec: str, split: str = "train", options: dict | None = None):
    """The dataset named by ``spec``: ``"<kind>:<path>"`` or a ``.npy`` path (read as ``npy:<path>``).

    Args:
        spec: see :func:`pyaeplus.data.open_dataset` for the kinds.
        split: ``"train"``/``"test"`` for the kinds that have splits.
        options: loader options.

    Returns:
        The dataset (items ``(x, y)``).
    """
    if ":" not in spec and spec.endswith(".npy"):
        spec = "npy:" + spec
    return open_dataset(spec, split=split, **(options or {}))


def dataset_labels(ds) -> np.ndarray | None:
    """The dataset's labels (``ds.targets``) as a flat array, or None when it has none (absent or all < 0)."""
    t = getattr(ds, "targets", None)
    if t is None:
        return None
    y = np.asarray(t.cpu() if hasattr(t, "cpu") else t).reshape(-1)
    return None if (y < 0).all() else y


def labels_of(spec: str | None, data) -> np.ndarray | None:
    """Labels for ``data``, one per sample: ``"data"`` (the dataset's own) or the path of a ``.npy``;
    None for ``spec=None``.

    Raises:
        ValueError when the dataset has no labels or the count differs from ``len(data)``.
    """
    if spec is None:
        return None
    labels = dataset_labels(data) if spec == "data" else np.load(spec).reshape(-1)
    if labels is None:
        raise ValueError("--labels data: the dataset has no labels")
    if len(labels) != len(data):
        raise ValueError(f"--labels has {len(labels)} labels for {len(data)} samples")
    return labels


def samples_of(spec: str, split: str = "train", options: dict | None = None) -> torch.Tensor:
    """Every sample of the data named by ``spec`` stacked into one float32 tensor (N, ...) (labels
    dropped). A ``.npy`` path without options is read directly (no dataset, no scaling)."""
    if ":" not in spec and spec.endswith(".npy") and not options:
        arr = np.load(spec, mmap_mode="r")
        if arr.ndim < 2 or len(arr) == 0:
            raise ValueError(f"{spec}: need an array of N >= 1 samples (N, ...), got shape {arr.shape}")
        return torch.from_numpy(np.array(arr, dtype=np.float32))  # read into memory (a writable copy)
    ds = open_spec(spec, split, options)
    if len(ds) == 0:
        raise ValueError(f"{spec}: the data is empty")
    x = ds.get_batch(torch.arange(len(ds)))[0] if hasattr(ds, "get_batch") else torch.stack(
        [ds[i][0] for i in range(len(ds))])
    return x.float()
