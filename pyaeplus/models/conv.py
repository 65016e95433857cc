"""Convolutional autoencoder for any input size, every shape computed (and checked) at build."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import _validate
from .base import OUTPUT_ACTIVATIONS, AutoEncoder, int_list, register
from .base import activation as make_activation

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
POOLS = ("max", "avg", "stride")
UPSAMPLES = ("nearest", "transposed")


def _image_shape(in_channels: int, input_shape) -> tuple[int, int, int]:
    if input_shape is None:
        raise ValueError("input_shape must be given as (H, W) or (C, H, W): the decoder reproduces exactly that size")
    dims = int_list("input_shape", input_shape)
    if len(dims) == 2:
        dims = [in_channels] + dims
    if len(dims) != 3:
        raise ValueError(f"input_shape must be (H, W) or (C, H, W), got {tuple(input_shape)}")
    if dims[0] != in_channels:
        raise ValueError(f"input_shape has {dims[0]} channels but in_channels={in_channels}")
    return tuple(dims)  # type: ignore[return-value]


def downsampled_sizes(hw: tuple[int, int], levels: int, pad: int, padding_mode: str) -> list[tuple[int, int]]:
    """Spatial sizes before each of ``levels`` halvings and after the last one (ceil(h/2) per
    level, so odd sizes lose nothing: 28 -> 14 -> 7 -> 4). Raises ValueError naming the level
    where the input cannot be halved or padded any more."""
    sizes = [hw]
    for i in range(levels + 1):
        h, w = sizes[-1]
        # padding_mode constraints as torch enforces them at run time; checked here at build
        if padding_mode == "reflect" and (pad >= h or pad >= w):
            raise ValueError(f"input_shape too small: level {i} has size {h}x{w}, which padding_mode='reflect' "
                             f"cannot pad by {pad} (needs size > {pad}); use fewer channels levels or a smaller kernel_size")
        if padding_mode == "circular" and (pad > h or pad > w):
            raise ValueError(f"input_shape too small: level {i} has size {h}x{w}, which padding_mode='circular' "
                             f"cannot pad by {pad}")
        if i == levels:
            break
        if h < 2 or w < 2:
            raise ValueError(f"input_shape {hw[0]}x{hw[1]} cannot be downsampled {levels} times: "
                             f"level {i} has size {h}x{w}; use fewer entries in channels or a larger input")
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


@register("conv")
class ConvAE(AutoEncoder):
    """Convolutional autoencoder: ``len(channels)`` conv levels that halve H and W (ceil), an
    optional dense bottleneck, and a mirrored decoder that reproduces the input size exactly.

    Args:
        in_channels: input channels C.
        channels: output channels of each encoder level (e.g. ``[32, 64]``).
        latent: dense latent width d, or ``None`` for a spatial latent
            (B, channels[-1], H_L, W_L) with no linear bottleneck.
        input_shape: (H, W) or (C, H, W) of the inputs; every layer's size is derived from it
            at construction, with a ValueError if it cannot be halved ``len(channels)`` times.
        kernel_size: odd convolution kernel size.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` for every
            convolution (transposed convolutions only support zero padding, as in PyTorch).
        pool: ``"max"`` / ``"avg"`` pooling (2x2, ceil mode) after each conv, or ``"stride"``
            (the conv itself has stride 2).
        upsample: ``"nearest"`` (resize to the exact size of the matching encoder level, then a
            conv) or ``"transposed"`` (stride-2 transposed conv with the output_padding that gives
            that exact size).
        activation: hidden activation name.
        output_activation: ``None``, ``"sigmoid"`` or ``"tanh"``.
        loss: ``mse``, ``mae``, ``bce`` (needs sigmoid output), ``ssim``, ``ms_ssim``, ``l1_ssim``.
        batch_norm: BatchNorm2d after every hidden conv.
        data_range: value range of the images for the SSIM losses.
        loss_options: keyword arguments of the SSIM-family loss module (``win_size``,
            ``win_sigma``, ``padding``, ``window``, ``K``; ``alpha`` for ``l1_ssim``; ``weights``
            for ``ms_ssim``), JSON-able. E.g. ``{"win_size": 7, "padding": "reflect"}``.

    Shapes:
        ``encode``: (B, C, H, W) -> (B, d) (or (B, channels[-1], H_L, W_L)); ``decode``: back to
        (B, C, H, W); ``score``: (B,).
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64), latent: int | None = 64, *,
                 input_shape: Sequence[int] | None = None, kernel_size: int = 3, padding_mode: str = "zeros",
                 pool: str = "max", upsample: str = "nearest", activation: str = "relu",
                 output_activation: str | None = None, loss: str = "mse", batch_norm: bool = False,
                 data_range: float = 1.0, loss_options: dict | None = None):
        super().__init__()
        in_channels = _validate.integer("in_channels", in_channels, lo=1)
        channels = int_list("channels", channels, allow_empty=False)
        if latent is not None:
            latent = _validate.integer("latent", latent, lo=1)
        kernel_size = _validate.integer("kernel_size", kernel_size, lo=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (so that 'same' padding exists), got {kernel_size}")
        _validate.choice("padding_mode", padding_mode, PADDING_MODES)
        _validate.choice("pool", pool, POOLS)
        _validate.choice("upsample", upsample, UPSAMPLES)
        _validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        make_activation(activation)  # validates the name
        self.data_range = _validate.number("data_range", data_range, positive=True)
        if loss == "bce" and output_activation != "sigmoid":
            raise ValueError("loss='bce' needs output_activation='sigmoid' (outputs must lie in [0, 1])")
        shape = _image_shape(in_channels, input_shape)
        pad = kernel_size // 2
        self.sizes = downsampled_sizes(shape[1:], len(channels), pad, padding_mode)
        self._config = dict(in_channels=in_channels, channels=channels, latent=latent, input_shape=list(shape),
                            kernel_size=kernel_size, padding_mode=padding_mode, pool=pool, upsample=upsample,
                            activation=activation, output_activation=output_activation, loss=loss,
                            batch_norm=bool(batch_norm), data_range=self.data_range)
        self._config["loss_options"] = self._init_recon(loss, shape, shape, loss_options)
        self.latent = latent

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=pad, padding_mode=padding_mode)

        def post(c: int) -> list[nn.Module]:
            return ([nn.BatchNorm2d(c)] if batch_norm else []) + [make_activation(activation)]

        enc: list[nn.Module] = []
        cin = in_channels
        for c in channels:
            if pool == "stride":
                enc += [conv(cin, c, stride=2), *post(c)]
            else:
                enc += [conv(cin, c), *post(c)]
                enc.append(nn.MaxPool2d(2, 2, ceil_mode=True) if pool == "max"
                           else nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False))
            cin = c
        self.encoder = nn.Sequential(*enc)
        hl, wl = self.sizes[-1]
        self.code_shape = (channels[-1], hl, wl)
        flat = math.prod(self.code_shape)
        if latent is not None:
            self.to_latent = nn.Linear(flat, latent)
            self.from_latent = nn.Sequential(nn.Linear(latent, flat), make_activation(activation))
        else:
            self.to_latent = self.from_latent = None

        dec: list[nn.Module] = []
        for i in reversed(range(len(channels))):
            cin, cout = channels[i], channels[i - 1] if i > 0 else channels[0]
            (h, w), (hs, ws) = self.sizes[i], self.sizes[i + 1]
            if upsample == "nearest":
                dec += [nn.Upsample(size=(h, w), mode="nearest"), conv(cin, cout), *post(cout)]
            else:
                # (hs-1)*2 - 2*pad + k + op = 2*hs - 1 + op must equal h, and h in {2hs-1, 2hs}
                op = (h - (2 * hs - 1), w - (2 * ws - 1))
                dec += [nn.ConvTranspose2d(cin, cout, kernel_size, stride=2, padding=pad, output_padding=op),
                        *post(cout)]
        dec.append(conv(channels[0], in_channels))
        self.decoder = nn.Sequential(*dec)
        self.output_act = make_activation(output_activation, "output_activation")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) (or (B, C·H·W)) -> latents (B, d), or (B, channels[-1], H_L, W_L) when latent=None."""
        h = self.encoder(self._as_image(x))
        return h if self.to_latent is None else self.to_latent(h.flatten(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output before the output activation, (B, C, H, W)."""
        h = z if self.from_latent is None else self.from_latent(z).reshape(z.shape[0], *self.code_shape)
        return self.decoder(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents -> reconstruction (B, C, H, W)."""
        return self.output_act(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x in x's shape."""
        return self.decode(self.encode(x)).reshape(x.shape)
