"""Data loaders: the IDX family (MNIST, Fashion-MNIST, KMNIST) with verified checksums, UCR/CSV
time series (ECG5000), image folders, MVTec-AD-layout folders with ground-truth masks, ``.npy``/raw memory maps larger than memory, and the
normalizations fitted on training data.

Every dataset yields ``(x, y)`` float/int64 pairs and most offer ``get_batch(indices)`` (one
vectorized gather), which ``pyaeplus.train.fit`` uses when present.
"""

from .arrays import MemmapDataset, write_npy
from .base import ArrayDataset, WithIndex, as_dataset
from .idx import IDX_DATASETS, IDXDataset, fashion_mnist, kmnist, load_idx_dataset, mnist, read_idx
from .images import IMAGE_EXTENSIONS, ImageFolder
from .mvtec import MVTecAD, mvtec_ad
from .registry import DATASET_KINDS, normalize, open_dataset
from .synthetic import ANOMALY_KINDS, synthetic_anomalies
from .series import SeriesDataset, csv_series, ecg5000, read_ucr, ucr
from .transforms import GlobalContrast, MinMaxScaler, global_contrast_normalization
from ._files import md5sum, verify_md5

__all__ = [
    "ArrayDataset", "WithIndex", "as_dataset",
    "IDX_DATASETS", "IDXDataset", "read_idx", "load_idx_dataset", "mnist", "fashion_mnist", "kmnist",
    "SeriesDataset", "read_ucr", "ucr", "csv_series", "ecg5000",
    "ImageFolder", "IMAGE_EXTENSIONS", "MVTecAD", "mvtec_ad",
    "MemmapDataset", "write_npy",
    "MinMaxScaler", "global_contrast_normalization", "GlobalContrast",
    "md5sum", "verify_md5",
    "DATASET_KINDS", "open_dataset", "normalize",
    "synthetic_anomalies", "ANOMALY_KINDS",
]
