"""Thresholds fitted on normal scores, metrics, score normalization and ensemble combination."""

from __future__ import annotations

import math

import numpy as np
import torch

METHODS = ("mean_std", "percentile", "fpr", "contamination", "pot")


def _scores(name: str, s, *, ndim: int = 1) -> np.ndarray:
    if isinstance(s, torch.Tensor):
        s = s.detach().cpu().double().numpy()
    a = np.asarray(s, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-d, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _frac(name: str, v, lo_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < float(v) < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {v!r}")
    return float(v)


def pot_threshold(scores, q: float = 1e-3, init_level: float = 0.98) -> float:
    """Peaks-over-threshold (Siffer et al. 2017, SPOT's initial step).

    The initial threshold t is the ``init_level`` quantile; a generalized Pareto distribution is
    fitted (maximum likelihood, location 0) to the excesses over t, and the returned threshold is
    the level exceeded with probability ``q``: ``t + sigma/gamma * ((q n / n_t)^-gamma - 1)``
    (``t - sigma log(q n / n_t)`` when gamma = 0).

    Args:
        scores: (N,) normal scores.
        q: risk, the target exceedance probability, in (0, 1); smaller than 1 - init_level.
        init_level: quantile of the initial threshold, in (0, 1).

    Returns:
        The threshold (float).
    """
    from scipy.stats import genpareto

    s = _scores("scores", scores)
    q, init_level = _frac("q", q), _frac("init_level", init_level)
    if q >= 1.0 - init_level:
        raise ValueError(f"q ({q}) must be below 1 - init_level ({1 - init_level:g}): the POT threshold "
                         "extrapolates beyond the initial one")
    t = float(np.quantile(s, init_level))
    exc = s[s > t] - t
    if exc.size < 3:
        raise ValueError(f"scores: only {exc.size} values above the init_level quantile; need more data "
                         "or a lower init_level")
    gamma, _, sigma = genpareto.fit(exc, floc=0.0)
    r = q * s.size / exc.size
    if abs(gamma) < 1e-8:
        return t - sigma * math.log(r)
    return t + sigma / gamma * (r ** (-gamma) - 1.0)


def threshold(scores, method: str = "mean_std", **kwargs) -> float:
    """A decision threshold fitted on normal (training or validation) scores; a sample is an anomaly
    when its score is strictly above it.

    Args:
        scores: (N,) scores of normal data (array or tensor), finite.
        method: ``"mean_std"`` (mean + ``k`` std, k=1), ``"percentile"`` (the ``q``-th percentile,
            q in [0, 100], default 95), ``"fpr"`` (false-positive ``rate`` on these scores, default 0.05),
            ``"contamination"`` (the top fraction ``c`` of these scores are anomalies, default 0.1),
            ``"pot"`` (peaks over threshold with a GPD fit: ``q`` risk, default 1e-3, ``init_level`` 0.98).

    Returns:
        The threshold (float).
    """
    kw = check_threshold(method, **kwargs)
    s = _scores("scores", scores)
    if method == "mean_std":
        return float(s.mean() + kw["k"] * s.std())
    if method == "percentile":
        return float(np.percentile(s, kw["q"]))
    if method in ("fpr", "contamination"):
        v = kw["rate" if method == "fpr" else "c"]
        # the smallest threshold leaving at most floor(v n) scores strictly above it
        srt = np.sort(s)
        m = int(math.floor(v * s.size + 1e-9))
        return float(srt[s.size - 1 - m]) if m < s.size else float(srt[0])
    return float(pot_threshold(s, kw["q"], kw["init_level"]))


def check_threshold(method: str, **kwargs) -> dict:
    """The arguments of :func:`threshold` checked without the scores (so that a job can refuse
    them before it computes any), defaults filled in.

    Returns:
        The keyword arguments of ``method`` (``{"k"}``, ``{"q"}``, ``{"rate"}``, ``{"c"}`` or
        ``{"q", "init_level"}``) as floats.

    Raises:
        ValueError: unknown method or a value out of range; TypeError: an unknown argument.
    """
    if method == "mean_std":
        k = kwargs.pop("k", 1.0)
        _no_more(kwargs, method)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
            raise ValueError(f"k must be a finite number, got {k!r}")
        return {"k": float(k)}
    if method == "percentile":
        q = kwargs.pop("q", 95.0)
        _no_more(kwargs, method)
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
            raise ValueError(f"q must be a percentile in [0, 100], got {q!r}")
        return {"q": float(q)}
    if method in ("fpr", "contamination"):
        arg = "rate" if method == "fpr" else "c"
        v = _frac(arg, kwargs.pop(arg, 0.05 if method == "fpr" else 0.1))
        _no_more(kwargs, method)
        return {arg: v}
    if method == "pot":
        q, lvl = _frac("q", kwargs.pop("q", 1e-3)), _frac("init_level", kwargs.pop("init_level", 0.98))
        _no_more(kwargs, method)
        if q >= 1.0 - lvl:
            raise ValueError(f"q ({q}) must be below 1 - init_level ({1 - lvl:g}): the POT threshold "
                             "extrapolates beyond the initial one")
        return {"q": q, "init_level": lvl}
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _no_more(kw: dict, method: str) -> None:
    if kw:
        raise TypeError(f"threshold method {method!r} got unexpected argument(s) {sorted(kw)}")


def metrics(scores, labels, threshold: float | None = None, *, pos_label: int = 1) -> dict:
    """Detection metrics (scikit-learn). The positive class is the anomaly: ``labels == pos_label``.

    Args:
        scores: (N,) scores, higher = more anomalous.
        labels: (N,) labels; ``pos_label`` marks anomalies, anything else is normal.
        threshold: predictions are ``scores > threshold``; None skips the thresholded metrics.
        pos_label: the label value of anomalies.

    Returns:
        dict: ``auroc``, ``ap`` (threshold-free; NaN when only one class is present), and with a
        threshold ``accuracy``, ``precision``, ``recall``, ``f1``; plus ``positive_class``,
        ``n``, ``n_anomalies``, ``threshold``.
    """
    from sklearn import metrics as skm

    s = _scores("scores", scores)
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels).reshape(-1) if np.ndim(labels) else np.asarray([labels])
    if y.dtype.kind in "fc" and not np.isfinite(y).all():
        raise ValueError(f"labels contain {int((~np.isfinite(y)).sum())} NaN/Inf value(s); every sample needs a "
                         f"label (pos_label={pos_label} marks anomalies), none may be missing")
    if y.dtype.kind == "O":
        raise TypeError("labels must be numbers or booleans, got objects")
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"labels must have one label per score ({s.shape[0]}), got {y.shape[0]}")
    yb = (y == pos_label).astype(np.int64)
    res: dict = {"positive_class": f"label {pos_label} = anomaly", "n": int(s.size), "n_anomalies": int(yb.sum())}
    both = 0 < yb.sum() < yb.size
    res["auroc"] = float(skm.roc_auc_score(yb, s)) if both else float("nan")
    res["ap"] = float(skm.average_precision_score(yb, s)) if both else float("nan")
    if threshold is not None:
        if not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        pred = (s > float(threshold)).astype(np.int64)
        res["threshold"] = float(threshold)
        res["accuracy"] = float(skm.accuracy_score(yb, pred))
        res["precision"] = float(skm.precision_score(yb, pred, zero_division=0))
        res["recall"] = float(skm.recall_score(yb, pred, zero_division=0))
        res["f1"] = float(skm.f1_score(yb, pred, zero_division=0))
    return res


# ---- normalization / combination -----------------------------------------------------------------
class Normalizer:
    """Score normalization fitted on reference (normal training) scores, so that detectors of
    different scales can be combined.

    Args:
        method: ``"zscore"`` ((s − mean)/std), ``"minmax"`` ((s − min)/(max − min)), ``"rank"``
            (fraction of reference scores ≤ s, in [0, 1]) or ``"pvalue"`` (fraction of reference
            scores ≥ s, with the +1 correction: small = anomalous).
    """

    def __init__(self, method: str = "zscore"):
        if method not in ("zscore", "minmax", "rank", "pvalue"):
            raise ValueError(f"method must be 'zscore', 'minmax', 'rank' or 'pvalue', got {method!r}")
        self.method = method

    def fit(self, reference) -> "Normalizer":
        r = _scores("reference", reference)
        self.sorted_ = np.sort(r)
        self.mean_, self.std_ = float(r.mean()), float(r.std())
        self.min_, self.max_ = float(r.min()), float(r.max())
        return self

    def transform(self, scores) -> np.ndarray:
        if not hasattr(self, "sorted_"):
            raise RuntimeError("Normalizer is not fitted; call fit(reference) first")
        s = _scores("scores", scores)
        if self.method == "zscore":
            return (s - self.mean_) / (self.std_ if self.std_ > 0 else 1.0)
        if self.method == "minmax":
            span = self.max_ - self.min_
            return (s - self.min_) / (span if span > 0 else 1.0)
        m = self.sorted_.size
        if self.method == "rank":
            return np.searchsorted(self.sorted_, s, side="right") / m
        ge = m - np.searchsorted(self.sorted_, s, side="left")
        return (ge + 1.0) / (m + 1.0)


def normalize(scores, method: str = "zscore", reference=None) -> np.ndarray:
    """Normalize ``scores`` (N,) or (N, M) column by column, each fitted on ``reference`` (same
    columns) or on itself. See :class:`Normalizer` for the methods. Returns float64 of the same shape."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must be (N,) or (N, M), got shape {s.shape}")
    ref = s if reference is None else np.asarray(
        reference.detach().cpu() if isinstance(reference, torch.Tensor) else reference, dtype=np.float64)
    if ref.ndim != s.ndim or (s.ndim == 2 and ref.shape[1] != s.shape[1]):
        raise ValueError(f"reference must have the same columns as scores, got {ref.shape} vs {s.shape}")
    if s.ndim == 1:
        return Normalizer(method).fit(ref).transform(s)
    return np.stack([Normalizer(method).fit(ref[:, j]).transform(s[:, j]) for j in range(s.shape[1])], 1)


def combine(scores, method: str = "mean", *, n_buckets: int = 5, seed: int = 0) -> np.ndarray:
    """Combine the (N, M) scores of M detectors (normalize them first) into (N,).

    Args:
        scores: (N, M) array.
        method: ``"mean"``, ``"max"``, ``"aom"`` (average of maximum: the detectors are split at
            random into ``n_buckets`` groups, max in each group, mean over groups) or ``"moa"``
            (maximum of average: mean in each group, max over groups) (Aggarwal & Sathe 2015).
        n_buckets: number of groups for aom/moa (≤ M).
        seed: seed of the random grouping.

    Returns:
        float64 (N,).
    """
    s = _scores("scores", scores, ndim=2)
    m = s.shape[1]
    if method == "mean":
        return s.mean(1)
    if method == "max":
        return s.max(1)
    if method in ("aom", "moa"):
        if isinstance(n_buckets, bool) or not isinstance(n_buckets, int) or not 1 <= n_buckets <= m:
            raise ValueError(f"n_buckets must be an int in [1, {m}] (the number of detectors), got {n_buckets!r}")
        perm = np.random.default_rng(seed).permutation(m)
        groups = np.array_split(perm, n_buckets)
        if method == "aom":
            return np.stack([s[:, g].max(1) for g in groups], 1).mean(1)
        return np.stack([s[:, g].mean(1) for g in groups], 1).max(1)
    raise ValueError(f"method must be 'mean', 'max', 'aom' or 'moa', got {method!r}")


def feature_subsets(n_features: int, n_estimators: int = 10, *, seed: int = 0) -> list[np.ndarray]:
    """Random feature subsets for feature bagging (Lazarevic & Kumar 2005): each of size drawn
    uniformly in [d/2, d − 1], sorted indices. Train one detector per subset on ``X[:, subset]``,
    normalize their scores and :func:`combine` them."""
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 2:
        raise ValueError(f"n_features must be an int >= 2, got {n_features!r}")
    if isinstance(n_estimators, bool) or not isinstance(n_estimators, int) or n_estimators < 1:
        raise ValueError(f"n_estimators must be a positive int, got {n_estimators!r}")
    rng = np.random.default_rng(seed)
    lo = max(1, n_features // 2)
    return [np.sort(rng.choice(n_features, size=int(rng.integers(lo, n_features)), replace=False))
            for _ in range(n_estimators)]


__all__ = ["threshold", "pot_threshold", "metrics", "Normalizer", "normalize", "combine", "feature_subsets", "METHODS"]
