"""Image sets with ground-truth defect masks in the MVTec AD layout (also VisA, MVTec AD 2 and any
folder that follows it)::

    ROOT/train/good/*.png
    ROOT/test/good/*.png
    ROOT/test/<defect>/*.png
    ROOT/ground_truth/<defect>/<name>_mask.png     (or <name>.png, as VisA's MVTec-style split has it)

Images and masks are decoded once (Pillow, in threads) into uint8 arrays: a category of MVTec AD
at 256x256 is a few tens of MB, so training epochs read memory, not PNG files.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
from typing import Sequence

import numpy as np
import torch

from .base import ArrayDataset
from .images import IMAGE_EXTENSIONS

__all__ = ["MVTecAD", "mvtec_ad", "NORMAL_FOLDER"]

NORMAL_FOLDER = "good"


def _size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, Sequence)) or isinstance(size, str):
        raise TypeError(f"size must be an int or (H, W), got {size!r}")
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return hw


def _images_in(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _find_masks(root: pathlib.Path, defect: str, images: list[pathlib.Path]) -> list[pathlib.Path]:
    """The mask of each image of ``test/<defect>``: ``<stem>_mask.*`` (MVTec AD) or ``<stem>.*`` (VisA)
    in ``ground_truth/<defect>``; a missing mask or a mask without an image is an error."""
    gt = root / "ground_truth" / defect
    if not gt.is_dir():
        raise ValueError(f"masks: {gt} does not exist; every defect folder test/{defect} needs its masks in "
                         f"ground_truth/{defect}/<name>_mask.png")
    by_stem = {p.stem: p for p in _images_in(gt)}
    found, missing = [], []
    for img in images:
        m = by_stem.pop(img.stem + "_mask", None) or by_stem.pop(img.stem, None)
        if m is None:
            missing.append(img)
        found.append(m)
    if missing:
        shown = ", ".join(f"{p} (looked for {gt / (p.stem + '_mask.png')})" for p in missing[:3])
        raise ValueError(f"masks: {len(missing)} image(s) of test/{defect} have no mask: {shown}"
                         + (" ..." if len(missing) > 3 else ""))
    if by_stem:
        orphans = sorted(str(p) for p in by_stem.values())
        raise ValueError(f"masks: {len(orphans)} mask(s) in {gt} match no image of test/{defect} (named "
                         f"<image name>_mask.png?): {', '.join(orphans[:3])}" + (" ..." if len(orphans) > 3 else ""))
    return found


def _decode(path: pathlib.Path, mode: str, size, resample) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 array (H, W) or (H, W, 3), original (H, W)) of one image or mask."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            orig = (im.height, im.width)
            im = im.convert(mode)
            if size is not None and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), resample)  # Pillow takes (W, H)
            return np.array(im, dtype=np.uint8), orig
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def _mode(first: pathlib.Path, channels) -> str:
    if channels is None:
        from PIL import Image

        with Image.open(first) as im:
            return "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or None (as stored), got {channels!r}")
    return "L" if channels == 1 else "RGB"


class MVTecAD(ArrayDataset):
    """One category of an MVTec-AD-layout folder as an in-memory dataset (see :func:`mvtec_ad`).

    Items are ``(x (C, H, W) float32 in [0, 1], y int64)`` with ``y`` 1 for any defect, 0 for good.

    Attributes:
        masks: (N, H, W) uint8 tensor in {0, 1}, the ground-truth defect pixels (zeros for good images).
        defect_types: per image, the name of its folder (``"good"`` or the defect type).
        files: per image, its path.
        original_sizes: per image, its (H, W) on disk (before ``size`` resizing).
    """

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, defect_types: list[str],
                 files: list[pathlib.Path], original_sizes: list[tuple[int, int]], root: pathlib.Path, split: str):
        super().__init__(data, targets, scale=1.0 / 255.0)
        self.masks, self.defect_types, self.files = masks, defect_types, files
        self.original_sizes, self.root, self.split = original_sizes, root, split

    def subset(self, mask_or_indices) -> "MVTecAD":
        """The selected rows (bool mask or indices) with their masks, defect types and files."""
        sel = torch.as_tensor(mask_or_indices)
        if sel.dtype == torch.bool:
            sel = sel.nonzero().reshape(-1)
        idx = sel.tolist()
        out = MVTecAD(self.data[sel], self.targets[sel], self.masks[sel], [self.defect_types[i] for i in idx],
                      [self.files[i] for i in idx], [self.original_sizes[i] for i in idx], self.root, self.split)
        out.transform = self.transform
        return out

    def __repr__(self) -> str:
        kinds = sorted(set(self.defect_types))
        return (f"MVTecAD({str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"sample_shape={self.sample_shape}, defect_types={kinds})")


def mvtec_ad(root: str | os.PathLike, split: str = "train", *, size: int | Sequence[int] | None = None,
             channels: int | None = None, resample: str = "bilinear", workers: int | None = None) -> MVTecAD:
    """Load one category folder in MVTec AD's layout with its ground-truth masks.

    ``split/good`` holds the normal images (label 0); every other folder of the split is a defect
    type (label 1) whose images have masks in ``ground_truth/<defect>/``, named ``<name>_mask.<ext>``
    (MVTec AD) or ``<name>.<ext>`` (VisA and MVTec AD 2 converted to this layout). Mask pixels that
    are not 0 are defect pixels (MVTec stores 255, VisA stores the defect's class index).

    Args:
        root: the category folder (e.g. ``mvtec_anomaly_detection/bottle``).
        split: ``"train"`` or ``"test"`` (any sub-folder of root that follows the layout).
        size: ``(H, W)`` or an int for square: images are resized with ``resample``, masks with
            nearest-neighbour (so they stay binary and aligned); None keeps the stored size (all
            images must then share it).
        channels: 1 (grayscale), 3 (RGB) or None (the mode of the first image: the grayscale
            categories of MVTec AD, such as grid or screw, load with 1 channel).
        resample: Pillow filter for the images: ``"bilinear"``, ``"bicubic"``, ``"lanczos"``,
            ``"box"`` or ``"nearest"``.
        workers: decoding threads (default: up to 8, one per CPU).

    Returns:
        :class:`MVTecAD`, items ``(x (C, H, W) float32 in [0, 1], y)``, with ``.masks`` (N, H, W) uint8
        in {0, 1}, ``.defect_types``, ``.files`` and ``.original_sizes``.

    Raises:
        FileNotFoundError: root or ``root/split`` is not a folder.
        ValueError: no images; an image of a defect folder without its mask; a mask without an image;
            a mask whose size differs from its image's; images of different sizes with ``size=None``.
    """
    from PIL import Image

    size = _size(size)
    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS, "box": Image.BOX}
    if resample not in filters:
        raise ValueError(f"resample must be one of {tuple(filters)}, got {resample!r}")
    root = pathlib.Path(root).expanduser()
    folder = root / str(split)
    if not folder.is_dir():
        raise FileNotFoundError(f"split {split!r}: {folder} is not a folder (expected the MVTec AD layout "
                                f"{root}/train/good, {root}/test/<defect>, {root}/ground_truth/<defect>)")
    files, kinds, masks = [], [], []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs = _images_in(d)
        files += imgs
        kinds += [d.name] * len(imgs)
        masks += [None] * len(imgs) if d.name == NORMAL_FOLDER else _find_masks(root, d.name, imgs)
    if not files:
        raise ValueError(f"no images with extensions {IMAGE_EXTENSIONS} in the sub-folders of {folder}")
    mode = _mode(files[0], channels)
    n_workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers) as pool:
        images = list(pool.map(lambda p: _decode(p, mode, size, filters[resample]), files))
        decoded = list(pool.map(lambda p: None if p is None else _decode(p, "L", size, Image.NEAREST), masks))
    return _assemble(root, str(split), files, kinds, masks, images, decoded)


def _assemble(root, split, files, kinds, mask_files, images, decoded) -> MVTecAD:
    shapes = {a.shape for a, _ in images}
    if len(shapes) > 1:
        raise ValueError(f"images under {root / split} differ in size ({sorted(shapes)[:4]}); pass size= to "
                         "resize them to one size")
    hw = images[0][0].shape[:2]
    mask_arr = np.zeros((len(files), *hw), dtype=np.uint8)
    for i, m in enumerate(decoded):
        if m is None:
            continue
        if m[1] != images[i][1]:
            raise ValueError(f"masks: {mask_files[i]} is {m[1][1]}x{m[1][0]} but its image {files[i]} is "
                             f"{images[i][1][1]}x{images[i][1][0]} (W x H); a mask must match its image")
        mask_arr[i] = m[0] != 0
    data = np.stack([a for a, _ in images])
    data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
    targets = torch.tensor([int(k != NORMAL_FOLDER) for k in kinds], dtype=torch.int64)
    return MVTecAD(torch.from_numpy(np.ascontiguousarray(data)), targets, torch.from_numpy(mask_arr), kinds,
                   files, [o for _, o in images], root, split)
