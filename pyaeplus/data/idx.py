"""The IDX family: MNIST, Fashion-MNIST, Kuzushiji-MNIST.

Files are read with numpy (big-endian header: magic 2051 for images with count, rows, cols;
2049 for labels with count; then uint8 data), gzip transparently. Each ``.gz`` file is checked
against its published MD5 (the values torchvision pins) every time it is loaded, so a corrupt or
truncated file is an error, never silent garbage.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import warnings
from typing import Iterable

import numpy as np
import torch

from ._files import download as _download
from ._files import verify_md5
from .base import ArrayDataset

__all__ = ["read_idx", "IDXDataset", "mnist", "fashion_mnist", "kmnist", "load_idx_dataset", "IDX_DATASETS"]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Published MD5s of the .gz files (as pinned by torchvision) and their mirrors.
IDX_DATASETS = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "classes": [str(i) for i in range(10)],
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot"],
    },
    "kmnist": {
        "mirrors": ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
        "classes": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    },
}

_MAGIC = {2049: 1, 2051: 3}  # magic -> number of dimensions in the header


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a uint8 array: (N, rows, cols) images or (N,) labels.

    Raises:
        ValueError: the magic number is not 2049/2051 or the payload size does not match the header
            (a truncated or corrupt file), naming the file.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e}); the file is corrupt or truncated") from e
    if len(raw) < 8:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = int(np.frombuffer(raw, ">u4", 1)[0])
    if magic not in _MAGIC:
        raise ValueError(f"{path}: IDX magic number is {magic}, expected 2049 (labels) or 2051 (images)")
    ndim = _MAGIC[magic]
    hdr = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = int(np.prod(dims))
    if len(raw) - hdr != expected:
        raise ValueError(f"{path}: the header promises {dims} = {expected} bytes of data, the file holds "
                         f"{len(raw) - hdr}; the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, expected, hdr).reshape(dims).copy()


class IDXDataset(ArrayDataset):
    """An MNIST-family split in memory: items ``(x (1, 28, 28) float32 in [0, 1], y int64)``.

    ``.data`` holds the raw (N, 28, 28) uint8 images and ``.targets`` the (N,) int64 labels, as
    torchvision spells them; ``.classes`` the class names; ``get_batch`` gathers many at once.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, name: str, split: str, classes: list[str],
                 transform=None):
        super().__init__(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), scale=1.0 / 255.0,
                         sample_shape=(1,) + tuple(images.shape[1:]), transform=transform)
        self.name, self.split, self.classes = name, split, classes

    def __repr__(self) -> str:
        return f"IDXDataset({self.name!r}, split={self.split!r}, n={len(self)})"


def _locate(root: pathlib.Path, name: str) -> pathlib.Path:
    """``root`` may be the folder holding the files or its parent with a ``<name>/`` sub-folder."""
    for d in (root / name, root / name.replace("-", "_"), root / name.upper(), root):
        if (d / "train-images-idx3-ubyte.gz").exists() or (d / "t10k-images-idx3-ubyte.gz").exists() or \
                (d / "train-images-idx3-ubyte").exists() or (d / "t10k-images-idx3-ubyte").exists():
            return d
    return root / name


def load_idx_dataset(name: str, root: str | os.PathLike, split: str = "train", *, download: bool = False,
                     classes: Iterable[int] | None = None, transform=None) -> IDXDataset:
    """Load ``name`` in ``IDX_DATASETS`` (``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``).

    Args:
        name: the dataset.
        root: folder holding the four files, or its parent with a ``<name>/`` sub-folder.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        download: fetch missing files from the canonical mirrors into ``root/<name>/``; each file is
            verified against its published MD5 before it takes its final name.
        classes: keep only these labels (e.g. ``[0]`` for one-class training on digit 0).
        transform: optional callable on float batches (B, 1, 28, 28).

    Returns:
        IDXDataset with items ``(x (1, 28, 28) float32 in [0, 1], y int64)``.

    Raises:
        FileNotFoundError: a file is missing and ``download`` is False.
        ValueError: a ``.gz`` file does not match its published MD5 (message names the file and both
            checksums), or an IDX header/payload is inconsistent.
    """
    if name not in IDX_DATASETS:
        raise ValueError(f"name must be one of {tuple(IDX_DATASETS)}, got {name!r}")
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    spec = IDX_DATASETS[name]
    folder = _locate(pathlib.Path(root).expanduser(), name)
    arrays = []
    for base in _FILES[split]:
        gz = folder / f"{base}.gz"
        md5 = spec["md5"][gz.name]
        if gz.exists():
            verify_md5(gz, md5)
            arrays.append(read_idx(gz))
        elif (folder / base).exists():
            # Only the .gz files have published checksums; an uncompressed file is checked for
            # structure (magic, exact payload size) and used with a warning.
            warnings.warn(f"{folder / base}: uncompressed IDX file has no published checksum; only its "
                          "structure was verified", stacklevel=2)
            arrays.append(read_idx(folder / base))
        elif download:
            _download([m + gz.name for m in spec["mirrors"]], gz, md5)
            arrays.append(read_idx(gz))
        else:
            raise FileNotFoundError(f"{gz} not found (root={os.fspath(root)!r}); pass download=True to fetch "
                                    f"{name} from {spec['mirrors'][0]}")
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    if classes is not None:
        keep = np.isin(labels, np.asarray(list(classes), dtype=np.int64))
        if not keep.any():
            raise ValueError(f"classes={list(classes)} selects no sample of {name} {split}")
        images, labels = images[keep], labels[keep]
    return IDXDataset(images, labels, name=name, split=split, classes=spec["classes"], transform=transform)


def mnist(root, split: str = "train", *, download: bool = False, classes=None, transform=None) -> IDXDataset:
    """MNIST digits (see ``load_idx_dataset`` for the arguments)."""
    return load_idx_dataset("mnist", root, split, download=download, classes=classes, transform=transform)


def fashion_mnist(root, split: str = "train", *, download: bool = False, classes=None,
                  transform=None) -> IDXDataset:
    """Fashion-MNIST (see ``load_idx_dataset`` for the arguments)."""
    return load_idx_dataset("fashion-mnist", root, split, download=download, classes=classes, transform=transform)


def kmnist(root, split: str = "train", *, download: bool = False, classes=None, transform=None) -> IDXDataset:
    """Kuzushiji-MNIST (see ``load_idx_dataset`` for the arguments)."""
    return load_idx_dataset("kmnist", root, split, download=download, classes=classes, transform=transform)
