"""Variational autoencoder (Kingma & Welling 2014), dense or convolutional, with a β weight."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import _validate
from .base import AutoEncoder, register
from .conv import ConvAE
from .dense import DenseAE


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per sample, (B,), in closed form."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)


@register("vae")
class VAE(AutoEncoder):
    """Gaussian-latent VAE over a dense or convolutional backbone.

    The encoder of the backbone (:class:`DenseAE` or :class:`ConvAE`) gives the posterior mean;
    a second head on the same features gives the log-variance. The loss is the negative β-ELBO
    per sample, averaged over the batch: ``recon + β·KL`` where ``recon`` is the reconstruction
    negative log-likelihood up to constants (the per-feature error of ``loss`` summed over the
    features: squared error for ``mse`` (a Gaussian decoder with variance ½), Bernoulli NLL for
    ``bce``, Laplace for ``mae``; for the SSIM losses, (1 − SSIM) times the number of pixels),
    and ``KL`` is KL(q(z|x) ‖ N(0, I)) in closed form.

    Args:
        arch: ``"dense"`` or ``"conv"``.
        latent: latent width d.
        beta: weight of the KL term (β-VAE; 1 is the ELBO).
        **backbone: the backbone's arguments: for ``"dense"`` ``in_features``, ``hidden``,
            ``activation``, ``output_activation``, ``loss``, ``input_shape``; for ``"conv"``
            ``in_channels``, ``channels``, ``input_shape``, ``kernel_size``, ``padding_mode``,
            ``pool``, ``upsample``, ``activation``, ``output_activation``, ``loss``, ``data_range``.

    Shapes:
        ``encode``: x -> posterior mean (B, d); ``encode_dist``: x -> (mu, logvar), each (B, d);
        ``decode``: (B, d) -> x's per-sample shape; ``score``: (B,) negative ELBO.
    """

    def __init__(self, arch: str = "dense", latent: int = 16, *, beta: float = 1.0, **backbone: Any):
        super().__init__()
        _validate.choice("arch", arch, ("dense", "conv"))
        latent = _validate.integer("latent", latent, lo=1)
        self.beta = _validate.number("beta", beta, nonnegative=True)
        if "latent" in backbone or "latent_activation" in backbone:
            raise ValueError("latent is the VAE's own argument; latent_activation is not supported by a VAE")
        # the backbone's last encoder layer is the mean head; it is not registered a second time
        # under another name (shared tensors would break safetensors checkpoints)
        self.backbone = (DenseAE if arch == "dense" else ConvAE)(latent=latent, **backbone)
        self.logvar_head = nn.Linear(self._mu_head().in_features, latent)
        # start near the prior's unit variance without a huge initial KL
        nn.init.zeros_(self.logvar_head.bias)
        self.logvar_head.weight.data.mul_(0.1)
        self.latent = latent
        cfg = self.backbone.config
        cfg.pop("latent")
        cfg.pop("latent_activation", None)
        self._config = dict(arch=arch, latent=latent, beta=self.beta, **cfg)
        self.feature_shape, self.recon_loss = self.backbone.feature_shape, self.backbone.recon_loss
        self.data_range = self.backbone.data_range

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters: (mu (B, d), logvar (B, d))."""
        b = self.backbone
        if isinstance(b, DenseAE):
            h = b.encoder[:-1](x.reshape(x.shape[0], b.in_features))      # (B, hidden[-1] or F)
        else:
            h = b.encoder(b._as_image(x)).flatten(1)                        # (B, C_L·H_L·W_L)
        return self._mu_head()(h), self.logvar_head(h)

    def _mu_head(self) -> nn.Linear:
        b = self.backbone
        return b.encoder[-1] if isinstance(b, DenseAE) else b.to_latent

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean (B, d) (deterministic; use ``encode_dist`` for the variance)."""
        return self.encode_dist(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean from latents (B, d)."""
        return self.backbone.decode(z)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) · ε, ε ~ N(0, I)."""
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction: from a posterior sample in training mode, from the mean in eval mode."""
        mu, logvar = self.encode_dist(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z).reshape(x.shape)

    def _terms(self, x: torch.Tensor, n_samples: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode_dist(x)
        kl = kl_standard_normal(mu, logvar)
        if n_samples is None:
            rec = self.backbone._recon_terms(x, mu, "sum")[1]
        else:
            rec = sum(self.backbone._recon_terms(x, self.reparameterize(mu, logvar), "sum")[1]
                      for _ in range(n_samples)) / n_samples
        return rec, kl, mu

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Negative β-ELBO with one reparameterized sample per input.

        Returns:
            dict with ``"loss"`` (mean of recon + β·KL), ``"recon"`` and ``"kl"`` (batch means
            of the per-sample terms).
        """
        x, _ = self.backbone._input(batch)
        return self.loss_terms(x)[0]

    def loss_terms(self, x: torch.Tensor):
        """(loss dict, posterior means)."""
        rec, kl, mu = self._terms(x, 1)
        return {"loss": (rec + self.beta * kl).mean(), "recon": rec.mean().detach(), "kl": kl.mean().detach()}, mu

    @torch.no_grad()
    def score(self, x: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        """Negative ELBO per sample (B,) (β = 1, higher = more anomalous).

        Args:
            x: inputs.
            n_samples: ``None`` decodes the posterior mean (deterministic); an int averages the
                reconstruction term over that many posterior samples (Monte Carlo ELBO).
        """
        x, _ = self.backbone._input(x, "x")
        if n_samples is not None:
            n_samples = _validate.integer("n_samples", n_samples, lo=1)
        rec, kl, _ = self._terms(x, n_samples)
        return rec + kl
