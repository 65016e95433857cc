"""Image folders (PNG/JPEG/BMP/TIFF via Pillow): grayscale or RGB, optional resize, labels from
sub-folder names."""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ImageFolder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolder(Dataset):
    """Images under ``root``, decoded lazily with Pillow.

    Layout: either ``root/<class>/<image>`` (labels = index of the sorted class folder names, in
    ``.classes``) or images directly in ``root`` (labels -1). Files are listed once, sorted, so the
    order is reproducible.

    Args:
        root: the folder.
        mode: ``"L"`` (grayscale, 1 channel) or ``"RGB"`` (3 channels); every image is converted.
        size: ``(H, W)`` or an int for square; None keeps each image's size: then all must match
            to be batched, and the constructor reads every image's header once (Pillow, no decode)
            to check that they do (``ValueError`` naming two files of different sizes otherwise).
        extensions: file endings to include (case-insensitive).
        resample: Pillow resampling filter name for resizing (``"bilinear"``, ``"bicubic"``,
            ``"nearest"``, ``"lanczos"``, ``"box"``).
        cache: keep decoded images in memory after their first read (small sets, many epochs).
        transform: optional callable on a float (C, H, W) image.

    Items are ``(x (C, H, W) float32 in [0, 1], y int64)``.
    """

    def __init__(self, root: str | os.PathLike, *, mode: str = "L", size: int | Sequence[int] | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, resample: str = "bilinear", cache: bool = False,
                 transform=None):
        from PIL import Image  # Pillow is needed only by this loader

        self._Image = Image
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self.root = pathlib.Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"root {self.root} is not a folder")
        if size is not None:
            size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"size must be a positive int or (H, W), got {size}")
        filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                   "lanczos": Image.LANCZOS, "box": Image.BOX}
        if resample not in filters:
            raise ValueError(f"resample must be one of {tuple(filters)}, got {resample!r}")
        self.mode, self.size, self._resample, self.transform = mode, size, filters[resample], transform
        exts = tuple(e.lower() for e in extensions)
        subdirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        files: list[tuple[pathlib.Path, int]] = []
        if subdirs:
            self.classes = [d.name for d in subdirs]
            for c, d in enumerate(subdirs):
                files += [(p, c) for p in sorted(d.rglob("*")) if p.suffix.lower() in exts and p.is_file()]
        else:
            self.classes = []
        files += [(p, -1) for p in sorted(self.root.iterdir()) if p.suffix.lower() in exts and p.is_file()]
        if not files:
            raise ValueError(f"no images with extensions {exts} under {self.root}")
        self.files = [p for p, _ in files]
        self.targets = torch.tensor([c for _, c in files], dtype=torch.int64)
        self.cache = {} if cache else None
        if size is None:
            self._check_same_size()

    def _check_same_size(self) -> None:
        """Without ``size``, images of different sizes cannot be batched: say so now, not at the
        first batch that mixes them."""
        first = None
        for path in self.files:
            try:
                with self._Image.open(path) as im:
                    wh = im.size
            except (OSError, ValueError):
                continue  # an unreadable file raises, naming it, when its item is read
            if first is None:
                first = (path, wh)
            elif wh != first[1]:
                raise ValueError(f"images under {self.root} differ in size ({first[0].name} is {first[1][1]}x"
                                 f"{first[1][0]}, {path.name} is {wh[1]}x{wh[0]} (H x W)); pass size=(H, W) to "
                                 "resize them all to one size")

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            with self._Image.open(path) as im:
                im = im.convert(self.mode)
                if self.size is not None and im.size != (self.size[1], self.size[0]):
                    im = im.resize((self.size[1], self.size[0]), self._resample)  # Pillow takes (W, H)
                a = np.array(im, dtype=np.uint8)  # a writable copy (torch refuses read-only buffers)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot decode image {path}: {e}") from e
        if a.ndim == 2:
            a = a[None]
        else:
            a = a.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(a))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if self.cache is not None and i in self.cache:
            raw = self.cache[i]
        else:
            raw = self._load(i)
            if self.cache is not None:
                self.cache[i] = raw
        x = raw.to(torch.float32) / 255.0
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, n={len(self)}, mode={self.mode!r}, size={self.size})"
