"""Headless matplotlib plots for anomaly detection: reconstruction grids, score histograms, ROC/PR
curves, anomaly-map overlays and training curves. Every function writes a PNG and returns its path."""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from .runtime.files import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: no display is needed
    import matplotlib.pyplot as plt

    return plt


def _np(name: str, a, ndim=None) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if ndim is not None and a.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must be {ndim}-d, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    return a


def _out(path) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.parent.is_dir():
        raise ValueError(f"path: the directory {str(p.parent)!r} does not exist")
    return p


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    plt = _plt()
    try:
        with atomic_path(path) as tmp:  # never a half-written PNG under the final name
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or None)
    finally:
        plt.close(fig)
    return path


def _as_images(name: str, a) -> np.ndarray:
    """(N, H, W) grey or (N, H, W, 3) colour images from (N, H, W), (N, C, H, W) or (N, F) square."""
    a = _np(name, a)
    if a.ndim == 2:
        side = int(round(a.shape[1] ** 0.5))
        if side * side != a.shape[1]:
            raise ValueError(f"{name} of shape {a.shape} are not square images; pass (N, C, H, W)")
        return a.reshape(a.shape[0], side, side)
    if a.ndim == 4:
        return a[:, 0] if a.shape[1] == 1 else np.moveaxis(a[:, :3], 1, -1)
    if a.ndim == 3:
        return a
    raise ValueError(f"{name} must be (N, H, W), (N, C, H, W) or (N, H*W), got shape {a.shape}")


def reconstruction_grid(originals, reconstructions, path, *, n: int = 8, titles=None) -> pathlib.Path:
    """Originals (top row) over their reconstructions (bottom row).

    Args:
        originals, reconstructions: (N, C, H, W), (N, H, W) or (N, H*W) of the same shape.
        path: PNG path (its directory must exist).
        n: number of columns (the first n samples).
        titles: optional n strings above the columns (e.g. scores).

    Returns:
        The path written.
    """
    a, b = _as_images("originals", originals), _as_images("reconstructions", reconstructions)
    if a.shape != b.shape:
        raise ValueError(f"reconstructions must have the shape of originals {a.shape}, got {b.shape}")
    p = _out(path)
    n = min(int(n), a.shape[0])
    plt = _plt()
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 2.8), squeeze=False)
    for j in range(n):
        for i, img in enumerate((a[j], b[j])):
            ax = axes[i, j]
            ax.imshow(np.clip(img, 0, None) if img.ndim == 3 else img, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            axes[0, j].set_title(str(titles[j]), fontsize=7)
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    return _save(fig, p)


def score_histogram(scores, labels, path, *, threshold: float | None = None, bins: int = 50,
                    xlabel: str = "anomaly score") -> pathlib.Path:
    """Histograms of the normal (label 0) and anomalous (label 1) scores with the threshold line.

    Args:
        scores: (N,) scores. labels: (N,) with 1 = anomaly, or None (one histogram).
        path: PNG path. threshold: drawn as a vertical line when given.

    Returns:
        The path written.
    """
    s = _np("scores", scores, 1)
    p = _out(path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if labels is None:
        ax.hist(s, bins=bins, alpha=0.8, label="all")
    else:
        y = _np("labels", labels, 1)
        if y.shape != s.shape:
            raise ValueError(f"labels must have one label per score ({s.size}), got {y.size}")
        edges = np.histogram_bin_edges(s, bins=bins)
        ax.hist(s[y != 1], bins=edges, alpha=0.6, label=f"normal ({int((y != 1).sum())})")
        ax.hist(s[y == 1], bins=edges, alpha=0.6, label=f"anomaly ({int((y == 1).sum())})")
    if threshold is not None:
        ax.axvline(float(threshold), color="k", linestyle="--", label=f"threshold {float(threshold):.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend()
    return _save(fig, p)


def roc_pr_curves(scores, labels, path, *, names=None) -> pathlib.Path:
    """ROC (left) and precision-recall (right) curves with AUROC/AP in the legend; anomaly (label 1)
    is the positive class.

    Args:
        scores: (N,) scores, or a list of (N,) score arrays (one curve each).
        labels: (N,) labels, 1 = anomaly; both classes must be present.
        path: PNG path. names: one legend name per score array.

    Returns:
        The path written.
    """
    from sklearn import metrics as skm

    ss = [scores] if not isinstance(scores, (list, tuple)) else list(scores)
    ss = [_np("scores", s, 1) for s in ss]
    y = _np("labels", labels, 1) == 1
    if any(s.shape != y.shape for s in ss):
        raise ValueError(f"labels must have one label per score ({ss[0].size}), got {y.size}")
    if y.all() or not y.any():
        raise ValueError("labels must contain both normal and anomalous samples for ROC/PR curves")
    names = names or [f"score {i}" for i in range(len(ss))] if len(ss) > 1 else (names or ["score"])
    p = _out(path)
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for s, name in zip(ss, names):
        fpr, tpr, _ = skm.roc_curve(y, s)
        a1.plot(fpr, tpr, label=f"{name} (AUROC {skm.roc_auc_score(y, s):.3f})")
        pr, rc, _ = skm.precision_recall_curve(y, s)
        a2.plot(rc, pr, label=f"{name} (AP {skm.average_precision_score(y, s):.3f})")
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set_xlabel("false positive rate")
    a1.set_ylabel("true positive rate")
    a1.set_title("ROC")
    a2.axhline(y.mean(), color="k", ls=":", lw=0.8)
    a2.set_xlabel("recall")
    a2.set_ylabel("precision")
    a2.set_title("precision-recall (anomaly = positive)")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    return _save(fig, p)


def anomaly_overlay(images, maps, path, *, n: int = 8, alpha: float = 0.5, titles=None, masks=None,
                    vmin: float | None = None, vmax: float | None = None) -> pathlib.Path:
    """Images with their per-pixel anomaly maps overlaid as a heat map (top: image, bottom: overlay),
    and the ground-truth defect contour when ``masks`` are given.

    Args:
        images: (N, C, H, W) or (N, H, W). maps: (N, H, W) anomaly maps (higher = more anomalous).
        path: PNG path. n: columns. alpha: heat-map opacity. titles: optional per-column strings.
        masks: optional (N, H, W) ground truth (0/1): its contour is drawn on both rows.
        vmin, vmax: colour range of the maps (default: min and max of the maps shown; 0 and 1 for maps
            normalized with ``pyaeplus.scoring.maps.normalize_maps``).

    Returns:
        The path written.
    """
    a = _as_images("images", images)
    m = _np("maps", maps, 3)
    if m.shape[0] != a.shape[0] or m.shape[1:] != a.shape[1:3]:
        raise ValueError(f"maps must be (N, H, W) = ({a.shape[0]}, {a.shape[1]}, {a.shape[2]}), got {m.shape}")
    g = None if masks is None else _np("masks", masks, 3)
    if g is not None and g.shape != m.shape:
        raise ValueError(f"masks must have the shape of maps {m.shape}, got {g.shape}")
    p = _out(path)
    n = min(int(n), a.shape[0])
    lo = float(m[:n].min()) if vmin is None else float(vmin)
    hi = float(m[:n].max()) if vmax is None else float(vmax)
    plt = _plt()
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 2.8), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(a[j], cmap="gray")
        axes[1, j].imshow(a[j], cmap="gray")
        axes[1, j].imshow(m[j], cmap="jet", alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1)
        if g is not None and g[j].any():
            for i in range(2):
                axes[i, j].contour(g[j], levels=[0.5], colors="lime", linewidths=0.8)
        for i in range(2):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        if titles is not None:
            axes[0, j].set_title(str(titles[j]), fontsize=7)
    return _save(fig, p)


def training_curves(history, path, *, log: bool = True) -> pathlib.Path:
    """Training (and validation) loss per epoch.

    Args:
        history: dict name -> list of per-epoch values (e.g. ``{"train": [...], "val": [...]}``),
            or a list of dicts (one per epoch) whose numeric entries become curves.
        path: PNG path. log: logarithmic y axis when all values are positive.

    Returns:
        The path written.
    """
    if isinstance(history, (list, tuple)):
        keys = [k for k in (history[0] if history else {}) if isinstance(history[0][k], (int, float))
                and k != "epoch"]
        history = {k: [h.get(k, np.nan) for h in history] for k in keys}
    if not isinstance(history, dict) or not history:
        raise ValueError("history must be a non-empty dict of name -> per-epoch values (or a list of dicts)")
    p = _out(path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    allpos = True
    for k, v in history.items():
        v = _np(f"history[{k!r}]", v, 1)
        allpos &= bool((v[np.isfinite(v)] > 0).all())
        ax.plot(np.arange(1, v.size + 1), v, marker="o", ms=3, label=str(k))
    if log and allpos:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, p)


__all__ = ["reconstruction_grid", "score_histogram", "roc_pr_curves", "anomaly_overlay", "training_curves"]
