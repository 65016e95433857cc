"""Anomaly maps as users evaluate and show them: resized to the input (or mask) size, smoothed
with a Gaussian (sigma 4 is the common choice on MVTec AD), normalized for display.

The defaults follow anomalib's post-processing: bilinear resizing with ``align_corners=False``;
a Gaussian of ``2 * int(truncate * sigma + 0.5) + 1`` taps (33 for sigma 4, as
``scipy.ndimage.gaussian_filter``'s default ``truncate=4``) with reflected borders (scipy's
``mode="mirror"``, torch's ``"reflect"``).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resize_maps", "gaussian_taps", "smooth_maps", "postprocess_maps", "MapNormalizer", "normalize_maps"]


def _as_maps(name: str, maps) -> torch.Tensor:
    if isinstance(maps, torch.Tensor):
        t = maps
    else:
        a = np.asarray(maps)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())  # read-only memory maps: copy the chunk
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3 or t.numel() == 0:
        raise ValueError(f"{name} must be (N, H, W) (or (N, 1, H, W)) and non-empty, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    return t


def _size(size) -> tuple[int, int]:
    hw = (int(size), int(size)) if isinstance(size, int) and not isinstance(size, bool) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return hw


def resize_maps(maps, size: int | Sequence[int], *, mode: str = "bilinear") -> torch.Tensor:
    """Resize (N, H, W) maps to ``size`` = (H', W') (or an int for square).

    Args:
        maps: (N, H, W) or (N, 1, H, W) tensor or array.
        size: the target size, usually the input image's or the ground-truth mask's.
        mode: ``"bilinear"`` (``align_corners=False``), ``"bicubic"`` or ``"nearest"``.

    Returns:
        (N, H', W') float tensor on the maps' device.
    """
    t = _as_maps("maps", maps)
    hw = _size(size)
    if mode not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"mode must be 'bilinear', 'bicubic' or 'nearest', got {mode!r}")
    if tuple(t.shape[1:]) == hw:
        return t
    extra = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(t[:, None], size=hw, mode=mode, **extra)[:, 0]


def gaussian_taps(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """1-D Gaussian taps (2 * int(truncate * sigma + 0.5) + 1,) float64 summing to 1."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def smooth_maps(maps, sigma: float = 4.0, *, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian smoothing of (N, H, W) maps, separable, reflected borders.

    Args:
        maps: (N, H, W) or (N, 1, H, W) tensor or array; each side must exceed the kernel radius
            ``int(truncate * sigma + 0.5)`` (16 for sigma 4).
        sigma: standard deviation in pixels, > 0.
        truncate: kernel radius in sigmas.

    Returns:
        (N, H, W) float tensor (the maps' float dtype, float32 for integer maps).
    """
    t = _as_maps("maps", maps)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    g = gaussian_taps(float(sigma), float(truncate)).to(t.device, t.dtype)
    r = g.numel() // 2
    if min(t.shape[1:]) <= r:
        raise ValueError(f"maps of size {tuple(t.shape[1:])} are too small for sigma={sigma} (kernel radius {r}); "
                         "smooth after resizing to the input size, or use a smaller sigma")
    x = F.pad(t[:, None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))[:, 0]


def postprocess_maps(maps, *, size: int | Sequence[int] | None = None, sigma: float | None = None,
                     chunk_size: int = 64, out: str | os.PathLike | None = None) -> np.ndarray:
    """Resize then smooth maps in chunks (any number of maps, e.g. a ``.maps.npy`` memory map).

    Args:
        maps: (N, H, W) array, memory map or tensor.
        size: target (H', W') (None keeps the size).
        sigma: Gaussian sigma applied after resizing (None: no smoothing).
        chunk_size: maps processed at once.
        out: optional ``.npy`` path: the result is written there as a memory map (returned opened
            read-only); otherwise an in-memory float32 array.

    Returns:
        (N, H', W') float32 numpy array (or memory map).
    """
    n = int(maps.shape[0])
    first = _chunk(maps, 0, 1, size, sigma)
    shape = (n,) + tuple(first.shape[1:])
    dst = np.empty(shape, np.float32) if out is None else np.lib.format.open_memmap(out, "w+", np.float32, shape)
    for s in range(0, n, chunk_size):
        e = min(n, s + chunk_size)
        dst[s:e] = _chunk(maps, s, e, size, sigma).cpu().numpy()
    if out is None:
        return dst
    dst.flush()
    del dst
    return np.load(out, mmap_mode="r")


def _chunk(maps, s: int, e: int, size, sigma) -> torch.Tensor:
    t = _as_maps("maps", maps[s:e] if isinstance(maps, torch.Tensor) else np.asarray(maps[s:e])).float()
    if size is not None:
        t = resize_maps(t, size)
    return smooth_maps(t, sigma) if sigma else t


class MapNormalizer:
    """Maps to [0, 1] for display: ``(m - lo) / (hi - lo)`` clipped, lo/hi learnt by :meth:`fit`.

    Args:
        method: ``"minmax"`` (lo, hi = min and max of the fitted maps) or ``"quantile"`` (lo, hi =
            the ``q`` quantiles of the fitted maps, normally the training (normal) images' maps:
            the normal background then sits near 0 and what no normal image reaches saturates at 1).
        q: (low, high) quantiles for ``"quantile"``, in [0, 1].
    """

    def __init__(self, method: str = "minmax", q: Sequence[float] = (0.5, 0.99)):
        if method not in ("minmax", "quantile"):
            raise ValueError(f"method must be 'minmax' or 'quantile', got {method!r}")
        q = tuple(float(v) for v in q)
        if len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
            raise ValueError(f"q must be (low, high) with 0 <= low < high <= 1, got {q}")
        self.method, self.q = method, q
        self.lo: float | None = None
        self.hi: float | None = None

    def fit(self, maps, max_values: int = 1 << 24) -> "MapNormalizer":
        """Learn lo/hi from (N, H, W) maps (at most ``max_values`` evenly strided pixels for quantiles)."""
        a = _as_maps("maps", maps).detach().reshape(-1)
        if self.method == "minmax":
            self.lo, self.hi = float(a.min()), float(a.max())
        else:
            step = max(1, math.ceil(a.numel() / max_values))
            v = a[::step].double().cpu().numpy()
            self.lo, self.hi = (float(x) for x in np.quantile(v, self.q))
        return self

    def __call__(self, maps) -> torch.Tensor:
        if self.lo is None:
            raise RuntimeError("MapNormalizer is not fitted: call fit(maps) first")
        t = _as_maps("maps", maps)
        return ((t - self.lo) / max(self.hi - self.lo, 1e-12)).clamp(0.0, 1.0)


def normalize_maps(maps, method: str = "minmax", *, reference=None, q: Sequence[float] = (0.5, 0.99)) -> torch.Tensor:
    """``MapNormalizer(method, q).fit(reference if given else maps)(maps)``: maps in [0, 1] for display."""
    return MapNormalizer(method, q).fit(maps if reference is None else reference)(maps)
