"""Normalizations fitted on training data and applied to any split.

``MinMaxScaler`` learns min and max from the training data only (as the ECG5000 autoencoder
example does: ``(x - min) / (max - min)`` with the training statistics, so test data may leave
[0, 1]); ``global_contrast_normalization`` is the per-sample normalization of Ruff et al. (Deep
SVDD): subtract the sample mean, divide by its L1 (or L2 / std) norm.
"""

from __future__ import annotations

import torch

__all__ = ["MinMaxScaler", "global_contrast_normalization", "GlobalContrast"]


class MinMaxScaler:
    """``(x - min) / (max - min)`` with min and max learnt by ``fit``.

    Args:
        per_feature: one min/max per feature (every position after the batch dim) instead of one
            global pair.
        clip: clamp the output to [0, 1] (data outside the training range then saturates).
        eps: floor of ``max - min`` (constant features map to 0).

    Call it on a batch ``(B, ...)``; ``state_dict``/``load_state_dict`` store the statistics
    (JSON-able lists), so a scaler can travel in a checkpoint's config.
    """

    def __init__(self, *, per_feature: bool = False, clip: bool = False, eps: float = 1e-12):
        self.per_feature, self.clip, self.eps = bool(per_feature), bool(clip), float(eps)
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

    def fit(self, x) -> "MinMaxScaler":
        """Learn min/max from ``x`` (B, ...) — a tensor, or a dataset with ``.tensors()``/``get_batch``."""
        x = _to_tensor(x)
        if x.numel() == 0:
            raise ValueError("x must not be empty")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or Inf values")
        if self.per_feature:
            self.min, self.max = x.amin(dim=0), x.amax(dim=0)
        else:
            self.min, self.max = x.min().reshape(()), x.max().reshape(())
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.min is None:
            raise RuntimeError("MinMaxScaler is not fitted: call fit(train_data) first")
        lo, hi = self.min.to(x.device, x.dtype), self.max.to(x.device, x.dtype)
        if self.per_feature and x.shape[1:] != lo.shape:
            if x.shape == lo.shape:  # a single sample without batch dim
                pass
            else:
                raise ValueError(f"x has feature shape {tuple(x.shape[1:])}, the scaler was fitted on "
                                 f"{tuple(lo.shape)}")
        y = (x - lo) / (hi - lo).clamp_min(self.eps)
        return y.clamp(0.0, 1.0) if self.clip else y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        lo, hi = self.min.to(y.device, y.dtype), self.max.to(y.device, y.dtype)
        return y * (hi - lo).clamp_min(self.eps) + lo

    def state_dict(self) -> dict:
        return {"per_feature": self.per_feature, "clip": self.clip, "eps": self.eps,
                "min": None if self.min is None else self.min.tolist(),
                "max": None if self.max is None else self.max.tolist()}

    def load_state_dict(self, state: dict) -> "MinMaxScaler":
        self.per_feature, self.clip, self.eps = bool(state["per_feature"]), bool(state["clip"]), float(state["eps"])
        self.min = None if state["min"] is None else torch.tensor(state["min"], dtype=torch.float32)
        self.max = None if state["max"] is None else torch.tensor(state["max"], dtype=torch.float32)
        return self


def _to_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.float() if not x.is_floating_point() else x
    if hasattr(x, "tensors"):
        return x.tensors()[0]
    if hasattr(x, "get_batch") and hasattr(x, "__len__"):
        return x.get_batch(torch.arange(len(x)))[0]
    return torch.as_tensor(x, dtype=torch.float32)


def global_contrast_normalization(x: torch.Tensor, scale: str = "l1", eps: float = 1e-12) -> torch.Tensor:
    """Per-sample global contrast normalization (Ruff et al. 2018, Deep SVDD preprocessing).

    Args:
        x: (B, ...) float batch; each sample (all dims after the first) is normalized on its own.
        scale: ``"l1"`` (mean absolute deviation, Deep SVDD's choice), ``"l2"`` (root mean square)
            or ``"std"`` (same as l2 about the mean).
        eps: floor of the divisor (a constant image maps to zeros).

    Returns:
        (B, ...) tensor: ``(x - mean) / scale(x - mean)`` per sample.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"x must be (B, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    if scale not in ("l1", "l2", "std"):
        raise ValueError(f"scale must be 'l1', 'l2' or 'std', got {scale!r}")
    flat = x.reshape(x.shape[0], -1)
    c = flat - flat.mean(dim=1, keepdim=True)
    s = c.abs().mean(dim=1, keepdim=True) if scale == "l1" else c.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (c / s.clamp_min(eps)).reshape(x.shape)


class GlobalContrast:
    """``global_contrast_normalization`` as a dataset transform (callable on a (B, ...) batch)."""

    def __init__(self, scale: str = "l1"):
        if scale not in ("l1", "l2", "std"):
            raise ValueError(f"scale must be 'l1', 'l2' or 'std', got {scale!r}")
        self.scale = scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return global_contrast_normalization(x, self.scale)
