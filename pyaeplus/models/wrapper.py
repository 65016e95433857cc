"""The base of the models that wrap another model of the zoo (denoising, Deep OC-SVM, Laplacian)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import AutoEncoder, as_model

__all__ = ["WrapperAE"]

# Read from the wrapped model when the wrapper does not have them itself: its shapes, its latent
# width (``dense_latent`` of top-k codes) and the training hooks it may define (``fit`` looks them
# up with getattr, so a wrapped model without a hook costs nothing per run).
_FORWARDED = frozenset({"image_shape", "latent", "on_train_begin", "on_epoch_end"})


class WrapperAE(AutoEncoder):
    """A model of the zoo around another one, ``self.base`` (an instance or ``{"name": ..., "config":
    {...}}``): ``encode``, ``decode``, ``forward`` and ``score`` are the wrapped model's, as are
    ``feature_shape``, ``recon_loss``, ``data_range``, ``image_shape``, ``latent`` and the training
    hooks (``on_train_begin``, ``on_epoch_end``; the per-step ``on_before/after_optimizer_step``
    reach every wrapped model through :class:`AutoEncoder`). ``loss(batch)`` validates the input
    with the wrapped model's rules and returns ``loss_terms(x)[0]``; subclasses define ``loss_terms``
    and override what they change.

    Args:
        base: the wrapped model.

    Attributes:
        base: the wrapped module. ``self._base_desc`` is its JSON description for ``config``.
    """

    def __init__(self, base: Any):
        super().__init__()
        self.base, self._base_desc = as_model("base", base)
        self.feature_shape, self.recon_loss = self.base.feature_shape, self.base.recon_loss

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base") if name in _FORWARDED else None
            if base is None:
                raise
            return getattr(base, name)

    @property
    def data_range(self) -> float:
        return float(getattr(self.base, "data_range", 1.0))

    def base_hook(self, name: str) -> Callable | None:
        """The wrapped model's hook ``name`` when it has one (for a wrapper that defines the same
        hook and must still run the wrapped model's)."""
        h = getattr(self.base, name, None)
        return h if callable(h) else None

    def encode(self, x: torch.Tensor):
        """The wrapped model's latents of x."""
        return self.base.encode(x)

    def decode(self, z) -> torch.Tensor:
        """The wrapped model's reconstruction from latents."""
        return self.base.decode(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's reconstruction of x."""
        return self.base(x)

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """The wrapper's objective on a batch (see ``loss_terms``); the input is checked as the
        wrapped model checks it."""
        x, _ = self.base._input(batch)
        return self.loss_terms(x)[0]

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's anomaly score, (B,)."""
        return self.base.score(x)
