"""Large-scale batch scoring, thresholds, metrics, score normalization/combination and the
``AnomalyDetector`` estimator.

* :func:`score`: per-sample anomaly scores in input order, streamed through DataLoader workers,
  optionally written in resumable chunks to ``.npy``/``.csv``/``.parquet``; sharded under torchrun.
* :func:`threshold`: mean_std, percentile, fpr, contamination, pot (GPD peaks over threshold).
* :func:`metrics`: AUROC, AP, accuracy, precision, recall, F1 (anomaly = positive class).
* :func:`normalize`, :func:`combine`, :func:`feature_subsets`: ensembles.
"""

from .detector import AnomalyDetector
from .engine import SCORES, fingerprint, read_scores, score
from .thresholds import (METHODS, Normalizer, check_threshold, combine, feature_subsets, metrics, normalize,
                         pot_threshold, threshold)

__all__ = ["score", "read_scores", "fingerprint", "SCORES", "threshold", "check_threshold", "pot_threshold", "metrics",
           "METHODS", "Normalizer", "normalize", "combine", "feature_subsets", "AnomalyDetector"]
