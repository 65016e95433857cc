"""Denoising autoencoder: any model of the zoo trained to undo input corruption."""

from __future__ import annotations

from typing import Any

import torch

from .. import _validate
from .base import register
from .wrapper import WrapperAE

NOISES = ("gaussian", "masking", "salt_pepper")


@register("denoising")
class DenoisingAE(WrapperAE):
    """Wraps an autoencoder so that training corrupts its inputs and the loss compares the
    reconstruction of the corrupted input with the clean one (Vincent et al. 2008). Noise is
    applied in ``loss`` only while the module is in training mode; ``forward``, ``encode`` and
    ``score`` always see the clean input.

    Args:
        base: the autoencoder to train, a model of the zoo or ``{"name": ..., "config": {...}}``
            (e.g. ``{"name": "conv", "config": {...}}``); its reconstruction loss is used.
        noise: ``"gaussian"`` (x + std·N(0, 1)), ``"masking"`` (each element set to 0 with
            probability ``p``) or ``"salt_pepper"`` (each element set to ``low`` or ``high`` with
            probability ``p``).
        std: standard deviation of the Gaussian noise.
        p: corruption probability for masking / salt-and-pepper.
        clip: optional ``(low, high)`` range the corrupted input is clamped to (e.g. ``(0, 1)``);
            also the salt-and-pepper values (default (0, 1)).

    Shapes: as the wrapped model.
    """

    def __init__(self, base: Any, *, noise: str = "gaussian", std: float = 0.1, p: float = 0.25,
                 clip: tuple[float, float] | None = None):
        super().__init__(base)
        _validate.choice("noise", noise, NOISES)
        self.std = _validate.number("std", std, nonnegative=True)
        self.p = _validate.number("p", p, nonnegative=True)
        if self.p > 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if clip is not None:
            if len(clip) != 2:
                raise ValueError(f"clip must be (low, high), got {clip!r}")
            lo, hi = _validate.number("clip[0]", clip[0]), _validate.number("clip[1]", clip[1])
            if lo >= hi:
                raise ValueError(f"clip must have low < high, got {clip!r}")
            clip = (lo, hi)
        self.noise, self.clip = noise, clip
        self._config = dict(base=self._base_desc, noise=noise, std=self.std, p=self.p, clip=None if clip is None else list(clip))

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of x (same shape), whatever the training mode."""
        if self.noise == "gaussian":
            y = x + self.std * torch.randn_like(x)
        elif self.noise == "masking":
            y = x * (torch.rand_like(x) >= self.p).to(x.dtype)
        else:
            lo, hi = self.clip if self.clip is not None else (0.0, 1.0)
            u = torch.rand_like(x)
            y = torch.where(u < self.p / 2, torch.full_like(x, lo), torch.where(u < self.p, torch.full_like(x, hi), x))
        return y if self.clip is None else y.clamp(*self.clip)

    def loss_terms(self, x: torch.Tensor):
        """The reconstruction of the corrupted input (training mode) against the clean input: (dict with
        ``"loss"`` and ``"recon"`` (scalars), latents of the corrupted input)."""
        xin = self.corrupt(x) if self.training else x
        z = self.base.encode(xin)
        _, err = self.base._recon_terms(x, z)
        recon = err.mean()
        return {"loss": recon, "recon": recon.detach()}, z
