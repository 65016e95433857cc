"""``AnomalyDetector``: a scikit-learn estimator with PyOD's detector conventions around any model of
the zoo, and the presets ``AutoEncoderDetector``, ``VAEDetector``, ``DeepSVDDDetector``.

Conventions (PyOD's ``BaseDetector``, which scikit-learn's ``OutlierMixin`` tags as an outlier
detector): the constructor only stores its arguments; ``fit`` builds a fresh network every time
(seeded by ``random_state``), standardizes the features (``preprocessing=True``) with statistics of
the training data, trains, and scores the training data. Higher scores are more anomalous; labels
are 0 (normal) and 1 (anomaly); ``threshold_`` is ``percentile(decision_scores_, 100 * (1 -
contamination))``. ``predict_proba`` and ``predict_confidence`` follow PyOD's definitions
(min-max or "unify" (Gaussian erf) scaling of the scores; Perini et al.'s confidence). Where
scikit-learn's own convention differs (``predict`` in {-1, +1}, ``decision_function`` > 0 for
inliers), PyOD's is kept; ``score_samples`` and ``offset_`` carry scikit-learn's meaning.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import numbers
import random

import numpy as np
import torch
from scipy.special import erf
from scipy.stats import binom
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import _inputs, engine, thresholds

# train.fit arguments the detector sets from its own parameters (not through fit_options)
_OWN_FIT_ARGS = ("model", "train_data", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "amp", "device",
                 "seed", "progress", "num_workers")


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


@contextlib.contextmanager
def _global_rng_kept():
    """``fit`` seeds torch/numpy/random (``train.fit`` does): the caller's RNG states come back after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _reinitialise(m: nn.Module) -> None:
    """Fresh weights for a deep copy of a template: a zoo model takes those of a newly built twin (its own
    initialisation, buffers such as Deep SVDD's centre reset); any other module calls every
    submodule's ``reset_parameters``."""
    from .. import models

    name = getattr(m, "model_name", None)
    if name in models.MODELS and type(m) is models.MODELS[name] and hasattr(m, "config"):
        m.load_state_dict(models.build(name, **m.config).state_dict())
        return
    for sub in m.modules():
        if callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()


class AnomalyDetector(OutlierMixin, BaseEstimator):
    """Train an autoencoder (or Deep SVDD, ...) on ``X``, score, threshold (1 = anomaly).

    Args:
        model: the network: ``None`` (the class's preset; ``AnomalyDetector``: a ``DenseAE``), a name
            of ``pyaeplus.models.MODELS`` (``"dense"``, ``"conv"``, ``"vae"``, ``"deep_svdd"`` ...), a
            config dict ``{"name": ..., "config": {...}}``, or a model instance used as a template
            (deep-copied and re-initialised by every ``fit``; ``pretrained=True`` keeps its weights).
            Input sizes (``in_features``, ``input_shape``, ``in_channels``) are filled in from ``X``.
        model_options: constructor arguments of a model given by name, config or preset (e.g.
            ``{"hidden": [64], "latent": 8}``).
        anomaly_score: the ``score`` of :func:`pyaeplus.scoring.score` (``"model"`` (the model's own),
            ``"mse"``, ``"mae"``, ``"bce"``, ``"ssim"``, ``"ms_ssim"``, ``"latent_knn"``, ...) or a
            callable. (Not ``score``: scikit-learn reserves that name for a method.)
        contamination: the expected fraction of anomalies in the training data, in (0, 0.5]:
            ``threshold_`` is the ``100 * (1 - contamination)`` percentile of the training scores
            (PyOD's rule); or ``"auto"``: the training data is taken as normal and ``threshold``
            applies.
        threshold: with ``contamination="auto"`` only: a rule of :func:`pyaeplus.scoring.threshold`
            (``"mean_std"``, ``"percentile"``, ``"fpr"``, ``"pot"``, ...), ``(method, kwargs)``,
            ``{"method": ..., **kwargs}``, or a fixed number. ``None``: ``"mean_std"`` (mean + 1 std).
        preprocessing: standardize every feature with the training data's mean and standard deviation
            (as PyOD does by default). Use ``False`` for image losses (SSIM, BCE) on data in range.
        epochs: training epochs (0: no training, e.g. to calibrate a ``pretrained`` template).
        batch_size: rows per batch for training and scoring (PyOD's default, 32).
        lr: learning rate. optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``.
        weight_decay: optimizer weight decay.
        amp: mixed precision (``pyaeplus.train.fit``'s ``amp``; bfloat16 on CUDA by default).
        device: ``"auto"`` (CUDA when present) or a device.
        num_workers: DataLoader worker processes (datasets read from disk).
        k: neighbours for ``anomaly_score="latent_knn"``.
        random_state: seed of the initial weights, dropout and batch order (int), a
            ``numpy.random.RandomState``, or ``None`` (a seed drawn from numpy's global RNG).
        pretrained: start from the template's weights instead of a fresh initialisation.
        verbose: progress bars and throughput lines.
        fit_options: further :func:`pyaeplus.train.fit` arguments (``grad_clip``, ``log_every``,
            ``checkpoint_dir``, ``drop_last`` ...). The last incomplete batch of an epoch is dropped when
            there is more than one batch (as PyOD does); ``{"drop_last": False}`` keeps it.

    Attributes (after ``fit``):
        model_: the trained network. decision_scores_: float64 (N,) training scores.
        threshold_: float. labels_: int (N,) training labels (1 = anomaly). n_features_in_: features
        per sample. sample_shape_: the per-sample shape of ``X``. scaler_: the fitted
        ``sklearn.preprocessing.StandardScaler`` or None. history_: ``train.fit``'s per-epoch history.
        offset_: ``-threshold_`` (scikit-learn: inlier iff ``score_samples(X) >= offset_``).
    """

    _preset: tuple[str, dict] = ("dense", {})

    def __init__(self, model=None, *, model_options=None, anomaly_score="model", contamination=0.1, threshold=None,
                 preprocessing=True, epochs=10, batch_size=32, lr=1e-3, optimizer="adam", weight_decay=0.0,
                 amp=True, device="auto", num_workers=0, k=5, random_state=None, pretrained=False, verbose=False,
                 fit_options=None):
        self.model = model
        self.model_options = model_options
        self.anomaly_score = anomaly_score
        self.contamination = contamination
        self.threshold = threshold
        self.preprocessing = preprocessing
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.amp = amp
        self.device = device
        self.num_workers = num_workers
        self.k = k
        self.random_state = random_state
        self.pretrained = pretrained
        self.verbose = verbose
        self.fit_options = fit_options

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    # ---- parameters --------------------------------------------------------------------------
    def _threshold_rule(self) -> tuple[str | None, dict]:
        """Validates score/contamination/threshold; returns the rule of ``contamination="auto"``."""
        if not callable(self.anomaly_score) and self.anomaly_score not in engine.SCORES:
            raise ValueError(f"anomaly_score must be one of {engine.SCORES} or a callable, got {self.anomaly_score!r}")
        c = self.contamination
        if isinstance(c, str):
            if c != "auto":
                raise ValueError(f"contamination must be 'auto' or a float in (0, 0.5], got {c!r}")
            return _threshold_spec(self.threshold) if self.threshold is not None else ("mean_std", {})
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0.0 < float(c) <= 0.5:
            raise ValueError(f"contamination must be 'auto' or a float in (0, 0.5], got {c!r}")
        if self.threshold is not None:
            raise ValueError(f"threshold={self.threshold!r} is a rule for normal-only training data and applies "
                             f"with contamination='auto'; got contamination={c!r}")
        return None, {}

    def _seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            if rs < 0:
                raise ValueError(f"random_state must be >= 0, a RandomState or None, got {rs!r}")
            return int(rs)
        return int(check_random_state(rs).randint(np.iinfo(np.int32).max))

    def _fresh_model(self) -> nn.Module:
        """A new network for ``sample_shape_`` (under the caller's seeded RNG)."""
        from .. import models
        from ..train import _infer_model_config

        spec = self.model
        if isinstance(spec, nn.Module):
            if self.model_options:
                raise ValueError("model_options configures a model given by name or config dict, but model is an "
                                 f"instance ({type(spec).__name__}); set its arguments when building it")
            m = copy.deepcopy(spec)
            if not self.pretrained:
                _reinitialise(m)
            fs = getattr(m, "feature_shape", None)
            if fs is not None and math.prod(fs) != self.n_features_in_:
                raise ValueError(f"X has {self.n_features_in_} features per sample, but the model template takes "
                                 f"samples of shape {tuple(fs)}")
            return m
        if self.pretrained:
            raise ValueError("pretrained=True keeps the weights of a model instance; model is "
                             f"{'a preset' if spec is None else repr(spec)}")
        if self.model_options is not None and not isinstance(self.model_options, dict):
            raise TypeError(f"model_options must be a dict of constructor arguments, got {self.model_options!r}")
        if spec is None:
            name, cfg = self._preset[0], dict(self._preset[1])
        elif isinstance(spec, str):
            name, cfg = spec, {}
        elif isinstance(spec, dict) and "name" in spec:
            name, cfg = spec["name"], dict(spec.get("config") or {})
        else:
            raise TypeError("model must be None, a name of pyaeplus.models.MODELS, a dict {'name': ..., 'config': "
                            f"{{...}}}} or a model instance, got {type(spec).__name__}")
        if name not in models.MODELS:
            raise ValueError(f"model must be one of {tuple(sorted(models.MODELS))}, got {name!r}")
        cls = models.MODELS[name]
        return cls(**_infer_model_config(cls, {**cfg, **(self.model_options or {})}, self.sample_shape_))

    def _fit_args(self, seed: int, n: int, model: nn.Module) -> dict:
        from .. import train

        opts = dict(self.fit_options or {})
        own = sorted(set(opts) & set(_OWN_FIT_ARGS))
        if own:
            raise ValueError(f"fit_options must not set {own}: they are parameters of {type(self).__name__}")
        unknown = sorted(set(opts) - set(inspect.signature(train.fit).parameters))
        if unknown:
            raise ValueError(f"fit_options: {unknown} are not arguments of pyaeplus.train.fit")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, numbers.Integral) or self.epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {self.epochs!r}")
        if not isinstance(self.preprocessing, bool):
            raise TypeError(f"preprocessing must be True or False, got {self.preprocessing!r}")
        if self.preprocessing and getattr(model, "recon_loss", None) in ("bce", "ssim", "ms_ssim", "l1_ssim"):
            raise ValueError(f"preprocessing=True standardizes every feature, but loss={model.recon_loss!r} compares "
                             "data in [0, 1] (or the data range); pass preprocessing=False")
        if n < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError(f"X has n_samples={n}: the model has BatchNorm layers, which need at least 2 samples")
        return {"epochs": int(self.epochs), "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.optimizer,
                "weight_decay": self.weight_decay, "amp": self.amp, "device": self.device, "seed": seed,
                "progress": bool(self.verbose), "num_workers": self.num_workers,
                "drop_last": n > self.batch_size if isinstance(self.batch_size, int) else False, **opts}

    # ---- fit ---------------------------------------------------------------------------------
    def fit(self, X, y=None) -> "AnomalyDetector":
        """Build a fresh network, standardize (``preprocessing``), train on ``X``, score it and set the
        threshold.

        Args:
            X: (N, F) or image-shaped (N, C, H, W) array-like or tensor (any real dtype, cast to
                float32), or a Dataset (e.g. ``pyaeplus.data.MemmapDataset``), streamed.
            y: ignored (unsupervised; present for scikit-learn's API).

        Returns:
            self.
        """
        from .. import train

        method, tkw = self._threshold_rule()
        data, n = _inputs.check_X(self, X, reset=True)
        seed = self._seed()
        with _global_rng_kept():
            torch.manual_seed(seed)
            model = self._fresh_model()
            kw = self._fit_args(seed, n, model)
            scaler = _inputs.fit_standardizer(data) if self.preprocessing else None
            data = _inputs.standardize(scaler, data, self.sample_shape_)
            history = train.fit(model, data, **kw).history if kw["epochs"] else []
        self.model_, self.scaler_, self.history_, self.seed_ = model, scaler, history, seed
        self._knn_ref = data if self.anomaly_score == "latent_knn" else None
        # latent_knn training scores leave each row's own latent out (else every nearest distance is 0)
        s = self._scores(data, exclude_self=self.anomaly_score == "latent_knn")
        if self.contamination == "auto":
            t = tkw["value"] if method is None else thresholds.threshold(s, method, **tkw)
        else:
            t = np.percentile(s, 100 * (1 - self.contamination))
        self.decision_scores_, self.threshold_ = s, float(t)
        self.labels_ = (s > self.threshold_).astype(int)
        self.offset_ = -self.threshold_
        self._mu, self._sigma = float(np.mean(s)), float(np.std(s))
        return self

    def _scores(self, data, exclude_self: bool = False) -> np.ndarray:
        s = engine.score(self.model_, data, score=self.anomaly_score, batch_size=self.batch_size, device=self.device,
                         amp=self.amp not in (False, None), num_workers=self.num_workers, progress=bool(self.verbose),
                         knn_reference=self._knn_ref, k=self.k, knn_exclude_self=exclude_self)
        return np.asarray(s, dtype=np.float64)

    # ---- outputs -----------------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores of ``X``, float64 (N,), higher = more anomalous (PyOD's convention)."""
        check_is_fitted(self, ["decision_scores_", "threshold_", "labels_"])
        data, _ = _inputs.check_X(self, X, reset=False)
        return self._scores(_inputs.standardize(self.scaler_, data, self.sample_shape_))

    def score_samples(self, X) -> np.ndarray:
        """scikit-learn's ``score_samples``: the negated anomaly score, float64 (N,) (higher = more normal)."""
        return -self.decision_function(X)

    def predict(self, X, return_confidence: bool = False):
        """Labels of ``X``, int (N,): 1 = anomaly (score > ``threshold_``), 0 = normal; with
        ``return_confidence``, also :meth:`predict_confidence`'s values."""
        s = self.decision_function(X)
        pred = (s > self.threshold_).astype(int)
        return (pred, self._confidence(s)) if return_confidence else pred

    def fit_predict(self, X, y=None) -> np.ndarray:
        """``fit(X)``, then the training labels ``labels_``."""
        return self.fit(X).labels_

    def predict_proba(self, X, method: str = "linear", return_confidence: bool = False):
        """Probability of being an anomaly, float64 (N, 2) as ``[P(normal), P(anomaly)]`` (PyOD's definitions).

        Args:
            X: as in :meth:`decision_function`.
            method: ``"linear"``: the scores min-max scaled by the training scores' range, clipped to
                [0, 1]; ``"unify"`` (Kriegel et al. 2011): ``erf((s - mean) / (std * sqrt(2)))`` of the
                training scores' mean and std, clipped to [0, 1].
            return_confidence: also return :meth:`predict_confidence`'s values.
        """
        if method not in ("linear", "unify"):
            raise ValueError(f"method must be 'linear' or 'unify', got {method!r}")
        s = self.decision_function(X)
        if method == "linear":
            p = MinMaxScaler().fit(self.decision_scores_.reshape(-1, 1)).transform(s.reshape(-1, 1)).ravel()
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                p = np.nan_to_num(erf((s - self._mu) / (self._sigma * np.sqrt(2))), nan=0.0)
        probs = np.empty((s.shape[0], 2))
        probs[:, 1] = p.clip(0, 1)
        probs[:, 0] = 1 - probs[:, 1]
        return (probs, self._confidence(s)) if return_confidence else probs

    def predict_confidence(self, X) -> np.ndarray:
        """How consistently the prediction of each sample would hold under a perturbed training set
        (Perini et al. 2020, as PyOD computes it), float64 (N,) in [0, 1]."""
        return self._confidence(self.decision_function(X))

    def _confidence(self, s: np.ndarray) -> np.ndarray:
        n = self.decision_scores_.shape[0]
        # how many training scores lie at or below each score; the Bayesian posterior of the outlier
        # probability; the binomial probability that its rank still lands above the threshold
        below = np.searchsorted(np.sort(self.decision_scores_), s, side="right")
        posterior = (1.0 + below) / (2.0 + n)
        c = self.labels_.sum() / n if isinstance(self.contamination, str) else self.contamination
        conf = 1.0 - binom.cdf(n - int(n * c), n, posterior)
        return np.where(s > self.threshold_, conf, 1.0 - conf)

    def __getstate__(self):
        state = super().__getstate__()
        m = state.get("model_")
        if isinstance(m, nn.Module) and any(t.device.type != "cpu" for t in m.state_dict().values()):
            dev = next(iter(m.state_dict().values())).device
            state["model_"] = copy.deepcopy(m.cpu())  # pickles load on machines without the device
            m.to(dev)
        return state


class AutoEncoderDetector(AnomalyDetector):
    """``AnomalyDetector`` with PyOD ``AutoEncoder``'s network: ``DenseAE`` F-64-32-64-F (ReLU, also on
    the 32-unit code; BatchNorm and dropout 0.2 after the hidden layers), MSE loss. ``model_options``
    overrides any of it (``hidden``, ``latent``, ``dropout``, ``batch_norm`` ...)."""

    _preset = ("dense", {"hidden": [64], "latent": 32, "latent_activation": "relu", "batch_norm": True,
                         "dropout": 0.2})


class VAEDetector(AnomalyDetector):
    """``AnomalyDetector`` with PyOD ``VAE``'s network: a dense ``VAE`` F-128-64-32-(2)-32-64-128-F,
    dropout 0.2, scored by its negative ELBO (``score="model"``)."""

    _preset = ("vae", {"arch": "dense", "hidden": [128, 64, 32], "latent": 2, "dropout": 0.2})


class DeepSVDDDetector(AnomalyDetector):
    """``AnomalyDetector`` with PyOD ``DeepSVDD``'s network: a bias-free dense ``DeepSVDD`` F-64-32,
    one-class objective, scored by the squared distance to the centre."""

    _preset = ("deep_svdd", {"arch": "dense", "hidden": [64], "rep_dim": 32})


__all__ = ["AnomalyDetector", "AutoEncoderDetector", "VAEDetector", "DeepSVDDDetector"]
