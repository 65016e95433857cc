"""Localization in one call: per-pixel maps of a model, brought to the masks' size and smoothed,
scored with pixel AUROC and AUPRO (what ``pyaeplus score --masks`` and ``pyaeplus demo`` report)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch

from .engine import score as _score
from .maps import postprocess_maps
from .pixel import pixel_metrics

__all__ = ["evaluate_maps", "localize", "masks_for", "describe", "MAP_SCORES"]

# the per-pixel map each score produces in ``scoring.score(maps=True)``
MAP_SCORES = {"ssim": "1 - SSIM", "ms_ssim": "1 - SSIM", "mse": "squared error", "mae": "squared error",
              "bce": "squared error", "model": "squared error", "svdd": "squared error", "elbo": "squared error",
              "latent_knn": "squared error"}

_SPILL_BYTES = 1 << 28  # processed maps larger than this go to a memory-mapped file


def masks_for(spec: str, data) -> np.ndarray:
    """Ground-truth masks named on the command line: ``"data"`` (the dataset's ``.masks``) or the
    path of a ``.npy`` (N, H, W) of 0/1 (opened as a memory map)."""
    if spec == "data":
        masks = getattr(data, "masks", None)
        if masks is None:
            raise ValueError("--masks data: the dataset has no ground-truth masks (mvtec:ROOT has them; or pass a "
                             ".npy of (N, H, W) masks)")
        return masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    p = pathlib.Path(spec).expanduser()
    if p.suffix.lower() != ".npy" or not p.is_file():
        raise ValueError(f"--masks must be 'data' or an existing .npy file, got {spec!r}")
    return np.load(p, mmap_mode="r")


def evaluate_maps(maps, masks, *, sigma: float | None = None, fpr_limit: float = 0.3, score: str | None = None,
                  spill: str | os.PathLike | None = None, **options) -> tuple[dict, np.ndarray]:
    """Resize maps to the masks' size, smooth them, and compute :func:`pixel_metrics`.

    Args:
        maps: (N, h, w) anomaly maps (array, memory map or tensor), e.g. from ``score(maps=True)``.
        masks: (N, H, W) ground truth, 0/1 (e.g. ``mvtec_ad(root, "test").masks``).
        sigma: Gaussian sigma applied after resizing (None: none; 4 is the common choice).
        fpr_limit: AUPRO integration limit.
        score: the score the maps come from (names the map in the result's ``map``: "1 - SSIM", ...).
        spill: ``.npy`` path for the processed maps when they exceed 256 MiB (default: kept in memory).
        **options: passed to :func:`pixel_metrics` (``tolerance``, ``chunk_size``, ...).

    Returns:
        (metrics dict, processed maps (N, H, W) float32): the metrics also hold ``sigma`` and ``map``.
    """
    if not hasattr(masks, "shape") or len(masks.shape) != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {getattr(masks, 'shape', None)}")
    if int(maps.shape[0]) != int(masks.shape[0]):
        raise ValueError(f"masks must hold one mask per map ({int(maps.shape[0])}), got {int(masks.shape[0])}")
    size = tuple(int(s) for s in masks.shape[1:])
    big = int(maps.shape[0]) * size[0] * size[1] * 4 > _SPILL_BYTES
    out = pathlib.Path(spill) if (big and spill is not None) else None
    processed = postprocess_maps(maps, size=size, sigma=sigma, out=out)
    m = pixel_metrics(processed, masks, fpr_limit=fpr_limit, **options)
    m["sigma"], m["map"] = sigma, MAP_SCORES.get(score, "anomaly") if isinstance(score, str) else "anomaly"
    return m, processed


def localize(model: torch.nn.Module, data, masks=None, *, score: str = "ssim", sigma: float | None = None,
             fpr_limit: float = 0.3, batch_size: int = 256, device="auto", **options) -> tuple[dict, np.ndarray]:
    """Score ``data`` with per-pixel maps and evaluate them against ground-truth masks.

    Args:
        model: an image model of ``pyaeplus.models``.
        data: (N, C, H, W) images or a dataset; a dataset with ``.masks`` (``mvtec_ad``,
            ``synthetic_anomalies``) provides its own masks.
        masks: (N, H', W') ground truth (default: ``data.masks``); maps are resized to H' x W'.
        score: the score whose map is used (``"ssim"``: the 1 - SSIM map; otherwise the squared error).
        sigma, fpr_limit: as in :func:`evaluate_maps`.
        batch_size, device: as in :func:`pyaeplus.scoring.score`.
        **options: passed to :func:`pixel_metrics`.

    Returns:
        (metrics dict with ``pixel_auroc``, ``aupro``, ... and ``map``, the processed maps (N, H', W')).
    """
    if masks is None:
        masks = getattr(data, "masks", None)
        if masks is None:
            raise ValueError("masks: data has no .masks; pass masks= (N, H, W)")
    _, maps = _score(model, data, score=score, maps=True, batch_size=batch_size, device=device, progress=False)
    return evaluate_maps(maps, masks, sigma=sigma, fpr_limit=fpr_limit, score=score, **options)


def describe(m: dict) -> str:
    """One line for people: ``pixel AUROC 0.9731  AUPRO 0.8512 (FPR <= 0.3; 1 - SSIM map, sigma 4; 57 regions)``."""
    how = m.get("map", "anomaly") + " map" + ("" if not m.get("sigma") else f", sigma {m['sigma']:g}")
    bound = "" if max(m["pixel_auroc_bound"], m["aupro_bound"]) == 0 else \
        f", within {max(m['pixel_auroc_bound'], m['aupro_bound']):.1e}"
    return (f"pixel AUROC {m['pixel_auroc']:.4f}  AUPRO {m['aupro']:.4f} (FPR <= {m['fpr_limit']:g}{bound}; {how}; "
            f"{m['n_regions']} defect regions)")
