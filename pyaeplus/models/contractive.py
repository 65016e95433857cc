"""Contractive autoencoder (Rifai et al. 2011): reconstruction + λ‖∂h/∂x‖²_F."""

from __future__ import annotations

from typing import Sequence

import torch

from .. import _validate
from .base import register
from .dense import DenseAE


@register("contractive")
class ContractiveAE(DenseAE):
    """Dense autoencoder whose loss adds the squared Frobenius norm of the encoder's Jacobian,
    ``λ · mean_b ‖∂h(x_b)/∂x_b‖²_F``.

    For the classic one-layer sigmoid encoder ``h = sigmoid(W x + b)`` (``hidden=[]``,
    ``latent_activation="sigmoid"``) the penalty has the closed form
    ``Σ_j (h_j (1 − h_j))² ‖W_j‖²`` (one extra elementwise pass); any other encoder gets the
    exact Jacobian through autograd (``latent`` backward passes with ``create_graph=True``).

    Args:
        in_features, hidden, latent, activation, output_activation, loss, input_shape, dropout, loss_options:
            as :class:`DenseAE` (batch norm is not offered: it couples the samples of a batch, so
            a per-sample Jacobian would not be defined).
        latent_activation: activation of the code, default ``"sigmoid"`` as in the paper.
        lam: weight λ ≥ 0 of the contractive penalty.
        jacobian: ``"auto"`` (closed form when it applies, else autograd) or ``"autograd"``.

    Shapes: as :class:`DenseAE`; ``jacobian_penalty(x)`` -> (B,).
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (), latent: int = 32, *,
                 activation: str = "sigmoid", output_activation: str | None = None,
                 latent_activation: str | None = "sigmoid", loss: str = "mse",
                 input_shape: Sequence[int] | None = None, dropout: float = 0.0,
                 lam: float = 1e-3, jacobian: str = "auto", loss_options: dict | None = None):
        super().__init__(in_features, hidden, latent, activation=activation, output_activation=output_activation,
                         latent_activation=latent_activation, loss=loss, input_shape=input_shape,
                         batch_norm=False, dropout=dropout, loss_options=loss_options)
        self.lam = _validate.number("lam", lam, nonnegative=True)
        _validate.choice("jacobian", jacobian, ("auto", "autograd"))
        del self._config["batch_norm"]
        self._config.update(lam=self.lam, jacobian=jacobian)
        self.closed_form = jacobian == "auto" and not self._config["hidden"] and latent_activation == "sigmoid"

    def jacobian_penalty(self, x: torch.Tensor, *, create_graph: bool | None = None,
                         codes: torch.Tensor | None = None) -> torch.Tensor:
        """‖∂h/∂x‖²_F per sample, (B,), differentiable w.r.t. the parameters.

        Args:
            x: inputs (B, F) or (B, *input_shape).
            create_graph: keep the graph of the autograd Jacobian (default: when grad is enabled).
            codes: ``encode(x)`` when already computed (the closed form reuses it).

        Returns:
            (B,) squared Frobenius norms.
        """
        x = x.reshape(x.shape[0], self.in_features)
        if self.closed_form:
            lin = self.encoder[0]
            h = torch.sigmoid(lin(x)) if codes is None else codes      # (B, d)
            w2 = lin.weight.square().sum(1)                            # (d,)  ‖W_j‖²
            return (h * (1 - h)).square() @ w2
        if create_graph is None:
            create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            h = self.encode(xr)                                        # (B, d)
            total = x.new_zeros(x.shape[0])
            # samples are independent, so d(sum_b h[b, j])/dx[b] is row j of sample b's Jacobian
            for j in range(h.shape[1]):
                (g,) = torch.autograd.grad(h[:, j].sum(), xr, create_graph=create_graph, retain_graph=True)
                total = total + g.square().sum(1)
        return total

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Reconstruction + λ·contractive penalty.

        Returns:
            dict with ``"loss"``, ``"recon"`` and ``"contractive"`` (the unweighted mean penalty).
        """
        x, _ = self._input(batch)
        return self.loss_terms(x)[0]

    def loss_terms(self, x: torch.Tensor):
        """(loss dict, latents)."""
        z = self.encode(x)
        _, err = self._recon_terms(x, z)
        recon = err.mean()
        pen = self.jacobian_penalty(x, codes=z).mean()
        return {"loss": recon + self.lam * pen, "recon": recon.detach(), "contractive": pen.detach()}, z
