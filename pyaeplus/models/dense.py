"""Fully connected autoencoder."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import _validate
from .base import OUTPUT_ACTIVATIONS, AutoEncoder, int_list, register
from .base import activation as make_activation


def mlp(sizes: list[int], act: str | None, *, last_act: bool, bias: bool = True,
        batch_norm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1]; activation (and BN/dropout) after every
    layer except the last unless ``last_act``."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2 or last_act:
            if batch_norm:
                layers.append(nn.BatchNorm1d(sizes[i + 1], affine=bias))
            layers.append(make_activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def check_image_shape(name: str, shape) -> tuple[int, ...] | None:
    if shape is None:
        return None
    dims = int_list(name, shape, allow_empty=False)
    if len(dims) not in (1, 2, 3):
        raise ValueError(f"{name} must be (F,), (H, W) or (C, H, W), got {tuple(dims)}")
    if len(dims) == 2:
        dims = [1] + dims
    return tuple(dims)


@register("dense")
class DenseAE(AutoEncoder):
    """Fully connected autoencoder: ``in_features -> hidden... -> latent -> reversed(hidden)... -> in_features``.

    Args:
        in_features: number of input features F (images are flattened: F = C·H·W).
        hidden: widths of the encoder's hidden layers; the decoder mirrors them.
        latent: latent width d.
        activation: hidden activation name (``relu``, ``leaky_relu``, ``elu``, ``gelu``, ``silu``,
            ``tanh``, ``sigmoid``, ``softplus``, ``identity``).
        output_activation: ``None`` (linear), ``"sigmoid"`` (inputs in [0, 1]; BCE then uses logits)
            or ``"tanh"``.
        latent_activation: activation applied to the latent code (default none).
        loss: reconstruction loss name: ``mse``, ``mae``, ``bce`` (needs a sigmoid output),
            ``ssim``, ``ms_ssim``, ``l1_ssim`` (need an image ``input_shape``; use pyaeplus' fused kernels).
        input_shape: per-sample shape of the inputs, e.g. ``(1, 28, 28)``; inputs may then be
            given as (B, C, H, W) or (B, F) and reconstructions come back in the same shape.
        batch_norm: BatchNorm1d after each hidden layer.
        dropout: dropout probability after each hidden layer.
        loss_options: keyword arguments of the SSIM-family loss module (``win_size``,
            ``win_sigma``, ``padding``, ``window``, ``K``, ``data_range``; ``alpha`` for
            ``l1_ssim``; ``weights`` for ``ms_ssim``), JSON-able.

    Shapes:
        ``encode``: (B, F) or (B, *input_shape) -> (B, d); ``decode``: (B, d) -> (B, *input_shape)
        (or (B, F)); ``score``: (B,).
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 64), latent: int = 32, *,
                 activation: str = "relu", output_activation: str | None = None,
                 latent_activation: str | None = None, loss: str = "mse",
                 input_shape: Sequence[int] | None = None, batch_norm: bool = False, dropout: float = 0.0,
                 loss_options: dict | None = None):
        super().__init__()
        in_features = _validate.integer("in_features", in_features, lo=1)
        hidden = int_list("hidden", hidden)
        latent = _validate.integer("latent", latent, lo=1)
        _validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        if latent_activation is not None:
            _validate.choice("latent_activation", latent_activation, ("relu", "sigmoid", "tanh", "identity"))
        _validate.choice("activation", activation, ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh",
                                                    "sigmoid", "softplus", "identity"))
        dropout = _validate.number("dropout", dropout, nonnegative=True)
        if dropout >= 1:
            raise ValueError(f"dropout must be < 1, got {dropout}")
        shape = check_image_shape("input_shape", input_shape)
        if shape is not None and math.prod(shape) != in_features:
            raise ValueError(f"input_shape {shape} has {math.prod(shape)} elements but in_features={in_features}")
        if loss == "bce" and output_activation != "sigmoid":
            raise ValueError("loss='bce' needs output_activation='sigmoid' (outputs must lie in [0, 1])")
        self._config = dict(in_features=in_features, hidden=hidden, latent=latent, activation=activation,
                            output_activation=output_activation, latent_activation=latent_activation, loss=loss,
                            input_shape=None if input_shape is None else list(input_shape),
                            batch_norm=bool(batch_norm), dropout=dropout)
        self.in_features, self.latent = in_features, latent
        self._config["loss_options"] = self._init_recon(
            loss, shape if shape is not None else (in_features,),
            shape if shape is not None and len(shape) == 3 else None, loss_options)
        self.encoder = mlp([in_features, *hidden, latent], activation, last_act=False,
                           batch_norm=batch_norm, dropout=dropout)
        self.latent_act = nn.Identity() if latent_activation is None else make_activation(latent_activation)
        self.decoder = mlp([latent, *hidden[::-1], in_features], activation, last_act=False,
                           batch_norm=batch_norm, dropout=dropout)
        self.output_act = make_activation(output_activation, "output_activation")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) or (B, *input_shape) -> latents (B, d)."""
        return self.latent_act(self.encoder(x.reshape(x.shape[0], self.in_features)))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output before the output activation, (B, *input_shape)."""
        return self._as_feature_shape(self.decoder(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents (B, d) -> reconstruction (B, *input_shape)."""
        return self.output_act(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x in x's shape."""
        return self.decode(self.encode(x)).reshape(x.shape)
