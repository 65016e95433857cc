"""A scikit-learn/PyOD style estimator around a model of the zoo."""

from __future__ import annotations

import numpy as np


from . import engine, thresholds


def _threshold_spec(t):
    if isinstance(t, bool):
        raise TypeError(f"threshold must be a method name, (method, kwargs), a dict or a number, got {t!r}")
    if isinstance(t, (int, float)):
        return None, {"value": float(t)}
    if isinstance(t, str):
        if t not in thresholds.METHODS:
            raise ValueError(f"threshold must be one of {thresholds.METHODS}, (method, kwargs), a dict or a number, got {t!r}")
        return t, {}
    if isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str) and isinstance(t[1], dict):
        return _threshold_spec(t[0])[0], dict(t[1])
    if isinstance(t, dict) and "method" in t:
        kw = dict(t)
        return _threshold_spec(kw.pop("method"))[0], kw
    raise TypeError(f"threshold must be a method name, (method, kwargs), a dict or a number, got {t!r}")


class AnomalyDetector:
    """Train an autoencoder, score with it, threshold the scores (1 = anomaly).

    Args:
        model: a pyaeplus.models model, or ``{"name": ..., "config": {...}}``.
        score: the score of :func:`pyaeplus.scoring.score` (``"model"``, ``"mse"``, ``"ssim"``,
            ``"latent_knn"`` (neighbours among the training latents), ..., or a callable).
        threshold: method name of :func:`pyaeplus.scoring.threshold` (default ``"contamination"``,
            c=0.1 as in PyOD), ``(method, kwargs)``, ``{"method": ..., **kwargs}``, or a fixed number.
        batch_size: rows per batch for training *and* scoring (every path honours it).
        device: ``"auto"`` or a device.
        num_workers: DataLoader workers for scoring.
        k: neighbours for ``score="latent_knn"``.
        **fit_kwargs: passed to :func:`pyaeplus.train.fit` (``epochs``, ``lr``, ...); ``fit=False``-like
            use: pass ``epochs=0`` to only calibrate an already trained model.

    Attributes (after ``fit``):
        threshold_: the fitted threshold (float).
        decision_scores_: float32 (N,) scores of the training data.
        labels_: int64 (N,) predictions on the training data.
    """

    def __init__(self, model, *, score="model", threshold="contamination", batch_size: int = 256,
                 device="auto", num_workers: int = 0, k: int = 5, **fit_kwargs):
        from ..models.base import as_model

        self.model, _ = as_model("model", model)
        if not callable(score) and score not in engine.SCORES:
            raise ValueError(f"score must be one of {engine.SCORES} or a callable, got {score!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._method, self._tkw = _threshold_spec(threshold)
        self.score, self.threshold, self.batch_size = score, threshold, batch_size
        self.device, self.num_workers, self.k = device, num_workers, k
        self.fit_kwargs = fit_kwargs

    def _score(self, X, exclude_self: bool = False) -> np.ndarray:
        return engine.score(self.model, X, score=self.score, batch_size=self.batch_size, device=self.device,
                            num_workers=self.num_workers, progress=False, knn_reference=self._knn_ref, k=self.k,
                            knn_exclude_self=exclude_self)

    def fit(self, X, y=None) -> "AnomalyDetector":
        """Train on ``X`` (normal data: array, tensor, Dataset, MemmapDataset), then fit the
        threshold on its scores. ``y`` is ignored (unsupervised). Returns self."""
        from .. import train

        epochs = self.fit_kwargs.get("epochs", 10)
        if epochs:
            kw = {"progress": False, "device": self.device, **self.fit_kwargs}
            train.fit(self.model, X, batch_size=self.batch_size, **kw)
        self._knn_ref = X if self.score == "latent_knn" else None
        # Training scores for latent_knn leave each row's own latent out (else every one is 0-biased).
        s = self._score(X, exclude_self=self.score == "latent_knn")
        self.decision_scores_ = s
        if self._method is None:
            self.threshold_ = self._tkw["value"]
        else:
            self.threshold_ = thresholds.threshold(s, self._method, **self._tkw)
        self.labels_ = (s > self.threshold_).astype(np.int64)
        return self

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise RuntimeError("AnomalyDetector is not fitted; call fit(X) first")

    def decision_function(self, X) -> np.ndarray:
        """float32 (N,) anomaly scores of ``X`` (higher = more anomalous)."""
        self._check_fitted()
        return self._score(X)

    def predict(self, X) -> np.ndarray:
        """int64 (N,): 1 = anomaly (score > ``threshold_``), 0 = normal."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    def fit_predict(self, X, y=None) -> np.ndarray:
        """``fit(X)`` then the training predictions ``labels_``."""
        return self.fit(X).labels_

    def __repr__(self) -> str:
        return (f"AnomalyDetector(model={type(self.model).__name__}, score={self.score!r}, "
                f"threshold={self.threshold!r}, batch_size={self.batch_size})")


__all__ = ["AnomalyDetector"]

