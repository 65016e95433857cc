"""pyaeplus: fast kernels and models for autoencoder-based anomaly detection in PyTorch."""

import importlib as _importlib

from ._version import __version__  # noqa: F401

from . import backends, config  # noqa: E402
from ._info import build_config  # noqa: E402
from . import functional, nn  # noqa: E402  (importing functional registers the custom ops)
from .functional import *  # noqa: E402,F401,F403

# Heavier subpackages load on first use, so `import pyaeplus` stays cheap (faiss, matplotlib,
# scikit-learn are imported only by the parts that need them).
_LAZY_MODULES = ("graph", "models", "data", "train", "scoring", "viz", "checkpoint", "export")
_LAZY_NAMES = {"AnomalyDetector": "scoring", "AutoEncoderDetector": "scoring", "VAEDetector": "scoring",
               "DeepSVDDDetector": "scoring"}


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return _importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(_importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'pyaeplus' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_NAMES))


__all__ = (["__version__", "backends", "build_config", "config", "functional", "nn"] + list(_LAZY_NAMES)
           + list(_LAZY_MODULES) + list(functional.__all__))
