"""``nn.Module`` wrappers: configuration in ``__init__``, one call into
``pyaeplus.functional`` in ``forward``."""

from __future__ import annotations

import math as _math
from typing import List as _List, Optional as _Optional, Sequence as _Sequence

import torch as _torch

from . import _validate as _v
from . import functional as _F
from .reference import ssim as _ssim_ref

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------


class TopK(_torch.nn.Module):
    """Top-k sparse activation over the last dimension; see ``pyaeplus.topk_activation``.

    In training mode ``k`` entries are kept per row; in eval mode ``k_eval`` if given, else
    ``round(alpha * k)`` if ``alpha`` is given, else ``k``.

    Args:
        k: entries kept per row in training (an int in [1, D]).
        relu: apply ReLU to the kept values.
        output: ``"dense"`` (shape of the input) or ``"sparse"`` (``TopKResult``).
        k_eval: k at inference.
        alpha: inference multiplier of k (Makhzani & Frey), used when ``k_eval`` is None.
        batch: BatchTopK (top ``k * B`` entries of the whole batch).
        sparse_format: ``"coo"`` or ``"csr"`` for ``batch=True, output="sparse"``.
    """

    def __init__(self, k: int, relu: bool = False, output: str = "dense", k_eval=None, alpha=None,
                 batch: bool = False, sparse_format: str = "coo"):
        super().__init__()
        self.k, self.relu, self.output = k, relu, output
        self.k_eval, self.alpha, self.batch, self.sparse_format = k_eval, alpha, batch, sparse_format

    def forward(self, x: _torch.Tensor):
        return _F.topk_activation(x, self.k, relu=self.relu, output=self.output, k_eval=self.k_eval,
                                  alpha=self.alpha, training=self.training, batch=self.batch,
                                  sparse_format=self.sparse_format)

    def extra_repr(self) -> str:
        s = f"k={self.k}, relu={self.relu}, output={self.output!r}"
        if self.k_eval is not None:
            s += f", k_eval={self.k_eval}"
        if self.alpha is not None:
            s += f", alpha={self.alpha}"
        if self.batch:
            s += f", batch=True, sparse_format={self.sparse_format!r}"
        return s


__all__ += ["TopK"]

# ---- sparse decoder ---------------------------------------------------------------------


__all__ += ["SparseDecoder"]


class SparseDecoder(_torch.nn.Module):
    """Decoder of a top-k sparse autoencoder: ``pyaeplus.sparse_decode(values, indices, weight, bias)``.

    ``weight`` is (num_latents, out_features): row ``i`` is latent ``i``'s decoder direction,
    i.e. the transpose of ``nn.Linear(num_latents, out_features).weight``, and it is initialized
    like that Linear (uniform in ``±1/sqrt(num_latents)``, bias too). To tie it to an encoder
    ``nn.Linear(out_features, num_latents)``, copy that encoder's weight (already (num_latents,
    out_features)).

    Args:
        num_latents: D, the number of latents (rows of ``weight``).
        out_features: d_out, the output width.
        bias: learn an additive (out_features,) bias.

    Shape:
        forward(values, indices): values/indices (..., k) -> (..., out_features); or
        forward(codes) with ``codes`` a ``(values, indices)`` pair such as the result of
        ``pyaeplus.topk_activation(x, k, output="sparse")``.
    """

    def __init__(self, num_latents: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_latents = _v.integer("num_latents", num_latents, lo=1)
        self.out_features = _v.integer("out_features", out_features, lo=1)
        kw = {"device": device, "dtype": dtype}
        self.weight = _torch.nn.Parameter(_torch.empty(self.num_latents, self.out_features, **kw))
        if bias:
            self.bias = _torch.nn.Parameter(_torch.empty(self.out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear(num_latents, out_features): kaiming_uniform(a=sqrt(5)) -> U(±1/sqrt(fan_in)).
        bound = 1.0 / _math.sqrt(self.num_latents)
        _torch.nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            _torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, values, indices=None):
        if indices is None:
            if not isinstance(values, (tuple, list)) or len(values) != 2:
                raise TypeError("SparseDecoder.forward takes (values, indices) or one (values, indices) pair, "
                                f"got {type(values).__name__}")
            values, indices = values
        return _F.sparse_decode(values, indices, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"num_latents={self.num_latents}, out_features={self.out_features}, bias={self.bias is not None}"


# ---- SSIM / MS-SSIM ---------------------------------------------------------------------


class _SSIMBase(_torch.nn.Module):
    def __init__(self, data_range, win_size, win_sigma, channel, spatial_dims, K, padding, window):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if isinstance(channel, bool) or not isinstance(channel, int) or channel < 1:
            raise ValueError(f"channel must be a positive int, got {channel!r}")
        self.data_range, self.win_size, self.win_sigma = data_range, win_size, win_sigma
        self.channel, self.spatial_dims, self.K = channel, spatial_dims, K
        self.padding, self.window = padding, window
        # pytorch-msssim keeps the taps as .win (C, 1, [1,] 1, K); kept for code that reads it.
        taps = _ssim_ref.gaussian_window(win_size, win_sigma) if window == "gaussian" else \
            _ssim_ref.uniform_window(win_size)
        self.win = taps.reshape((1, 1) + (1,) * (spatial_dims - 1) + (win_size,)).repeat(
            (channel, 1) + (1,) * spatial_dims)

    def _check(self, X: _torch.Tensor) -> None:
        if isinstance(X, _torch.Tensor) and X.dim() >= 2 and X.shape[1] != self.channel:
            raise ValueError(f"X has {X.shape[1]} channels but the module was built with channel={self.channel}")

    def _kw(self) -> dict:
        return dict(data_range=self.data_range, win_size=self.win_size, win_sigma=self.win_sigma, K=self.K,
                    padding=self.padding, window=self.window)


class SSIM(_SSIMBase):
    """Module form of :func:`pyaeplus.ssim`; a drop-in for ``pytorch_msssim.SSIM`` (same
    constructor arguments and defaults, plus ``padding``, ``window`` and ``reduction``).
    ``channel`` is checked against the inputs' channel count."""

    def __init__(self, data_range: float = 255, size_average: bool = True, win_size: int = 11,
                 win_sigma: float = 1.5, channel: int = 3, spatial_dims: int = 2,
                 K: _Sequence[float] = (0.01, 0.03), nonnegative_ssim: bool = False, *, padding: str = "valid",
                 window: str = "gaussian", reduction: _Optional[str] = None) -> None:
        super().__init__(data_range, win_size, win_sigma, channel, spatial_dims, K, padding, window)
        self.size_average, self.nonnegative_ssim, self.reduction = size_average, nonnegative_ssim, reduction

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        self._check(X)
        return _F.ssim(X, Y, size_average=self.size_average, nonnegative_ssim=self.nonnegative_ssim,
                        reduction=self.reduction, **self._kw())


class MS_SSIM(_SSIMBase):
    """Module form of :func:`pyaeplus.ms_ssim`; a drop-in for ``pytorch_msssim.MS_SSIM``."""

    def __init__(self, data_range: float = 255, size_average: bool = True, win_size: int = 11,
                 win_sigma: float = 1.5, channel: int = 3, spatial_dims: int = 2,
                 weights: _Optional[_List[float]] = None, K: _Sequence[float] = (0.01, 0.03), *,
                 padding: str = "valid", window: str = "gaussian", reduction: _Optional[str] = None) -> None:
        super().__init__(data_range, win_size, win_sigma, channel, spatial_dims, K, padding, window)
        self.size_average, self.weights, self.reduction = size_average, weights, reduction

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        self._check(X)
        return _F.ms_ssim(X, Y, size_average=self.size_average, weights=self.weights, reduction=self.reduction,
                           **self._kw())


class SSIMLoss(_torch.nn.Module):
    """``1 - SSIM(X, Y)`` (:func:`pyaeplus.functional.ssim_loss`); defaults for images in [0, 1]."""

    def __init__(self, data_range: float = 1.0, win_size: int = 11, win_sigma: float = 1.5,
                 K: _Sequence[float] = (0.01, 0.03), *, padding: str = "valid", window: str = "gaussian",
                 reduction: str = "mean") -> None:
        super().__init__()
        self.kw = dict(data_range=data_range, win_size=win_size, win_sigma=win_sigma, K=K, padding=padding,
                       window=window, reduction=reduction)

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        return _F.ssim_loss(X, Y, **self.kw)


class L1SSIMLoss(_torch.nn.Module):
    """``(1 - alpha) * L1 + alpha * (1 - SSIM)`` from one kernel pass
    (:func:`pyaeplus.functional.l1_ssim_loss`)."""

    def __init__(self, alpha: float = 0.84, data_range: float = 1.0, win_size: int = 11, win_sigma: float = 1.5,
                 K: _Sequence[float] = (0.01, 0.03), *, padding: str = "valid", window: str = "gaussian",
                 reduction: str = "mean") -> None:
        super().__init__()
        self.kw = dict(alpha=alpha, data_range=data_range, win_size=win_size, win_sigma=win_sigma, K=K,
                       padding=padding, window=window, reduction=reduction)

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        return _F.l1_ssim_loss(X, Y, **self.kw)


__all__ += ["SSIM", "MS_SSIM", "SSIMLoss", "L1SSIMLoss"]


# ---- graph-Laplacian regularization ------------------------------------------------------


class LaplacianRegularizer(_torch.nn.Module):
    """``lam * pyaeplus.laplacian_loss(z, graph, normalization=..., reduction=...)``.

    Args:
        lam: weight of the regularizer (a float >= 0).
        normalization: ``None``, ``"sym"`` or ``"rw"`` (see ``pyaeplus.laplacian_loss``).
        reduction: ``"sum"`` (default), ``"mean"`` or ``"none"``.

    ``forward(z, graph)``: z (N, d) latents, graph a ``pyaeplus.graph.Graph`` over the N rows
    (for mini-batches: ``full_graph.subgraph(batch_indices)``). Returns a scalar, or (N,) for
    ``reduction="none"``.
    """

    def __init__(self, lam: float = 1.0, normalization=None, reduction: str = "sum"):
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or lam == float("inf"):
            raise ValueError(f"lam must be a finite float >= 0, got {lam!r}")
        if normalization not in (None, "sym", "rw"):
            raise ValueError(f"normalization must be one of (None, 'sym', 'rw'), got {normalization!r}")
        if reduction not in ("none", "sum", "mean"):
            raise ValueError(f"reduction must be one of ('none', 'sum', 'mean'), got {reduction!r}")
        self.lam, self.normalization, self.reduction = float(lam), normalization, reduction

    def forward(self, z: _torch.Tensor, graph) -> _torch.Tensor:
        return self.lam * _F.laplacian_loss(z, graph, normalization=self.normalization, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, normalization={self.normalization!r}, reduction={self.reduction!r}"


__all__ += ["LaplacianRegularizer"]
