"""Large-scale batch scoring, thresholds, metrics, score normalization/combination and the
``AnomalyDetector`` estimator (scikit-learn / PyOD conventions) with its presets.

* :func:`score`: per-sample anomaly scores in input order, streamed through DataLoader workers,
  optionally written in resumable chunks to ``.npy``/``.csv``/``.parquet``; sharded under torchrun.
* :func:`threshold`: mean_std, percentile, fpr, contamination, pot (GPD peaks over threshold).
* :func:`metrics`: AUROC, AP, accuracy, precision, recall, F1 (anomaly = positive class).
* :func:`pixel_metrics`: pixel AUROC and AUPRO of anomaly maps against ground-truth masks (exact,
  streamed in chunks); :mod:`pyaeplus.scoring.maps`: maps resized, smoothed and normalized as users show them;
  :func:`localize` / :func:`evaluate_maps`: a model's maps brought to the masks and scored in one call.
* :func:`normalize`, :func:`combine`, :func:`feature_subsets`: ensembles.
* :class:`AnomalyDetector` (any model of the zoo) and :class:`AutoEncoderDetector`,
  :class:`VAEDetector`, :class:`DeepSVDDDetector` (PyOD's networks).
"""

from .detector import AnomalyDetector, AutoEncoderDetector, DeepSVDDDetector, VAEDetector
from .engine import SCORES, fingerprint, read_scores, score
from .pixel import pixel_metrics
from .localization import evaluate_maps, localize
from . import maps
from .thresholds import (METHODS, Normalizer, check_threshold, combine, feature_subsets, metrics, normalize,
                         pot_threshold, threshold)

__all__ = ["score", "read_scores", "fingerprint", "SCORES", "threshold", "check_threshold", "pot_threshold", "metrics",
           "METHODS", "Normalizer", "normalize", "combine", "feature_subsets", "AnomalyDetector", "AutoEncoderDetector",
           "VAEDetector", "DeepSVDDDetector", "pixel_metrics", "evaluate_maps", "localize", "maps"]
