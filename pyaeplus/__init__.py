"""pyaeplus: fast kernels and models for autoencoder-based anomaly detection in PyTorch."""

__version__ = "0.1.0"

from . import backends, config  # noqa: E402
from ._ext import build_config  # noqa: E402
from . import functional, nn  # noqa: E402  (importing functional registers the custom ops)
from .functional import *  # noqa: E402,F401,F403

__all__ = ["__version__", "backends", "build_config", "config", "functional", "nn"] + list(functional.__all__)
