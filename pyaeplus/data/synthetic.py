"""Generated image data with known anomalies: no download, reproducible from a seed.

Normal images are smooth: one to three Gaussian blobs of random position, size and brightness
plus faint noise. Anomalous images are normal images with a small structural defect of one of
three kinds: a thin straight scratch, a checkerboard patch, or a thin ring. Defects are local and
high-frequency, the kind a reconstruction-based detector with a structural (SSIM) score should
find; they are not simply brighter images (the defect replaces pixels, it is not added on top
of an overall intensity change).
"""

from __future__ import annotations

import math

import torch

from .base import ArrayDataset

__all__ = ["synthetic_anomalies", "ANOMALY_KINDS"]

ANOMALY_KINDS = ("scratch", "checker", "ring")


def _blobs(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.zeros(n, size, size)
    count = torch.randint(1, 4, (n,), generator=g)
    for j in range(3):
        cy, cx = torch.rand(n, 1, 1, generator=g) * 0.6 + 0.2, torch.rand(n, 1, 1, generator=g) * 0.6 + 0.2
        sig = torch.rand(n, 1, 1, generator=g) * 0.09 + 0.06
        amp = (torch.rand(n, 1, 1, generator=g) * 0.5 + 0.5) * (count > j).float().view(n, 1, 1)
        img = img + amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    img = img + 0.02 * torch.randn(n, size, size, generator=g)
    return img.clamp(0, 1)


def _defect_masks(kinds: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (m, size, size) in [0, 1], value (m, size, size)): where and with what a defect replaces pixels."""
    m = kinds.shape[0]
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    cy = torch.rand(m, 1, 1, generator=g) * (size * 0.5) + size * 0.25
    cx = torch.rand(m, 1, 1, generator=g) * (size * 0.5) + size * 0.25
    # scratch: a 1-pixel line segment of random angle and length 10..18 px through (cy, cx)
    ang = torch.rand(m, 1, 1, generator=g) * math.pi
    half = (torch.rand(m, 1, 1, generator=g) * 4 + 5)
    dy, dx = yy - cy, xx - cx
    along = dy * torch.sin(ang) + dx * torch.cos(ang)
    across = -dy * torch.cos(ang) + dx * torch.sin(ang)
    scratch = ((across.abs() < 0.8) & (along.abs() < half)).float()
    # checker: 6x6 patch of 2-px squares
    inside = ((yy - cy).abs() < 3) & ((xx - cx).abs() < 3)
    checker_val = ((torch.div(yy, 2, rounding_mode="floor") + torch.div(xx, 2, rounding_mode="floor")) % 2)
    checker = inside.float()
    # ring: radius 4..6 px, 1 px thick
    r = torch.rand(m, 1, 1, generator=g) * 2 + 4
    ring = ((dy**2 + dx**2).sqrt() - r).abs().lt(0.7).float()
    mask = torch.where((kinds == 0).view(m, 1, 1), scratch, torch.where((kinds == 1).view(m, 1, 1), checker, ring))
    value = torch.where((kinds == 1).view(m, 1, 1), checker_val.expand(m, size, size), torch.ones(m, size, size))
    return mask, value


def synthetic_anomalies(n: int, *, anomaly_fraction: float = 0.1, size: int = 28, seed: int = 0,
                        kinds: tuple[str, ...] = ANOMALY_KINDS) -> ArrayDataset:
    """Generate ``n`` grayscale images, a fraction of them anomalous.

    Args:
        n: number of images.
        anomaly_fraction: share of anomalies in [0, 1] (exactly ``round(n * anomaly_fraction)``).
        size: image height and width (>= 16).
        seed: the generator seed (same seed, same images).
        kinds: anomaly kinds to draw from, a subset of ``ANOMALY_KINDS``.

    Returns:
        ArrayDataset with items ``(x (1, size, size) float32 in [0, 1], y)``, ``y`` 0 for normal and
        1 for anomalous; ``.kinds`` holds per image -1 (normal) or the index in ``ANOMALY_KINDS``;
        ``.masks`` (n, size, size) uint8 in {0, 1} marks the pixels each defect replaced (the
        ground truth of pixel-level metrics; zeros for normal images).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0.0 <= float(anomaly_fraction) <= 1.0:
        raise ValueError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    bad = [k for k in kinds if k not in ANOMALY_KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {ANOMALY_KINDS}, got {kinds}")
    g = torch.Generator().manual_seed(int(seed))
    x = _blobs(n, size, g)
    n_anom = int(round(n * float(anomaly_fraction)))
    which = torch.randperm(n, generator=g)[:n_anom]
    allowed = torch.tensor([ANOMALY_KINDS.index(k) for k in kinds])
    kind_idx = allowed[torch.randint(0, len(allowed), (n_anom,), generator=g)]
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    if n_anom:
        mask, value = _defect_masks(kind_idx, size, g)
        x[which] = x[which] * (1 - mask) + value * mask
        masks[which] = (mask > 0).to(torch.uint8)
    y = torch.zeros(n, dtype=torch.int64)
    y[which] = 1
    all_kinds = torch.full((n,), -1, dtype=torch.int64)
    all_kinds[which] = kind_idx
    ds = ArrayDataset(x.unsqueeze(1).contiguous(), y)
    ds.kinds = all_kinds
    ds.masks = masks
    return ds
