"""``nn.Module`` wrappers: configuration in ``__init__``, one call into
``pyaeplus.functional`` in ``forward``."""

from __future__ import annotations

import math as _math
from typing import List as _List, Optional as _Optional, Sequence as _Sequence

import torch as _torch

from . import _ssim_args as _sa
from . import _validate as _v
from . import functional as _F

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

    def __init__(self, k: int, *, relu: bool = False, output: str = "dense", k_eval=None, alpha=None,
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


def _weight_and_bias(module: _torch.nn.Module, weight_shape: tuple[int, int], bias_size: int | None, device,
                     dtype) -> None:
    """``module.weight`` (weight_shape) and ``module.bias`` (bias_size,) or a registered None; uninitialized."""
    kw = {"device": device, "dtype": dtype}
    module.weight = _torch.nn.Parameter(_torch.empty(*weight_shape, **kw))
    if bias_size is not None:
        module.bias = _torch.nn.Parameter(_torch.empty(bias_size, **kw))
    else:
        module.register_parameter("bias", None)


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

    def __init__(self, num_latents: int, out_features: int, *, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_latents = _v.integer("num_latents", num_latents, lo=1)
        self.out_features = _v.integer("out_features", out_features, lo=1)
        _weight_and_bias(self, (self.num_latents, self.out_features), self.out_features if bias else None,
                         device, dtype)
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


# ---- fused top-k encoder ------------------------------------------------------------------


__all__ += ["TopKEncoder"]


class TopKEncoder(_torch.nn.Module):
    """``nn.Linear(in_features, num_latents)`` followed by top-k, fused: ``pyaeplus.topk_encode``.

    A drop-in for ``nn.Linear`` + :class:`TopK` (``output="sparse"``): ``weight`` (num_latents,
    in_features) and ``bias`` (num_latents,) are laid out, named and initialized exactly as
    ``nn.Linear``'s (same RNG draws), so state dicts transfer both ways; the backward touches only
    the selected latents. In eval mode ``k_eval`` if given, else ``round(alpha * k)`` if ``alpha``
    is given, else ``k`` latents are kept per row.

    Args:
        in_features: N, the input width.
        num_latents: D, the number of latents.
        k: latents kept per row in training (an int in [1, D]); may be changed between steps.
        bias: learn an additive (num_latents,) bias.
        relu: apply ReLU to the kept values.
        k_eval, alpha: the inference rule (see :func:`pyaeplus.topk_activation`).
        batch: BatchTopK (the top ``k * B`` entries of the batch; the output is then COO or CSR).
        sparse_format: ``"coo"`` or ``"csr"`` for ``batch=True``.

    Shape:
        (*, in_features) -> ``TopKResult(values (*, k'), indices (*, k'))``; with ``batch=True``
        ``BatchTopKCOO`` / ``BatchTopKCSR`` over the flattened rows.
    """

    def __init__(self, in_features: int, num_latents: int, k: int, *, bias: bool = True, relu: bool = True,
                 k_eval=None, alpha=None, batch: bool = False, sparse_format: str = "coo", device=None, dtype=None):
        super().__init__()
        self.in_features, self.num_latents = int(in_features), int(num_latents)
        if self.in_features < 1 or self.num_latents < 1:
            raise ValueError(f"in_features and num_latents must be >= 1, got {in_features}, {num_latents}")
        self.k, self.relu, self.k_eval, self.alpha = k, relu, k_eval, alpha
        self.batch, self.sparse_format = batch, sparse_format
        _weight_and_bias(self, (self.num_latents, self.in_features), self.num_latents if bias else None,
                         device, dtype)
        self.reset_parameters()

    # nn.Linear's initialization, draw for draw (kaiming_uniform(a=sqrt(5)), bias U(±1/sqrt(fan_in)))
    reset_parameters = _torch.nn.Linear.reset_parameters

    def forward(self, x: _torch.Tensor):
        return _F.topk_encode(x, self.weight, self.bias, self.k, relu=self.relu, batch=self.batch,
                              sparse_format=self.sparse_format, k_eval=self.k_eval, alpha=self.alpha,
                              training=self.training)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, num_latents={self.num_latents}, k={self.k}, bias={self.bias is not None}"
        s += f", relu={self.relu}" + ("" if self.k_eval is None else f", k_eval={self.k_eval}")
        s += "" if self.alpha is None else f", alpha={self.alpha}"
        return s + (f", batch=True, sparse_format={self.sparse_format!r}" if self.batch else "")


# ---- SSIM / MS-SSIM ---------------------------------------------------------------------


def _check_flag(name: str, v) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")


def _check_reduction(reduction, allow_none: bool) -> None:
    options = ("mean", "sum", "none")
    if not (reduction is None and allow_none) and reduction not in options:
        raise ValueError(f"reduction must be one of {options}{' or None' if allow_none else ''}, got {reduction!r}")


def _check_ssim_options(data_range, win_size, win_sigma, K, padding, window) -> None:
    """The constructor-time checks of every SSIM module (the same rules as the functions, so
    that a bad option fails where it is written, not at the first forward)."""
    _sa.constants(data_range, K)
    _sa.window_options(win_size, win_sigma, window)
    _v.choice("padding", padding, _sa.PADDINGS)


def _check_weights(weights) -> None:
    if weights is None:
        return
    if isinstance(weights, _torch.Tensor):
        weights = weights.tolist()
    if not isinstance(weights, (list, tuple)) or len(weights) < 1:
        raise TypeError(f"weights must be a non-empty list of level weights, got {weights!r}")
    for i, w in enumerate(weights):
        _v.number(f"weights[{i}]", w)


class _SSIMBase(_torch.nn.Module):
    def __init__(self, data_range, win_size, win_sigma, channel, spatial_dims, K, padding, window):
        super().__init__()
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if isinstance(channel, bool) or not isinstance(channel, int) or channel < 1:
            raise ValueError(f"channel must be a positive int, got {channel!r}")
        _check_ssim_options(data_range, win_size, win_sigma, K, padding, window)
        self.data_range, self.win_size, self.win_sigma = data_range, win_size, win_sigma
        self.channel, self.spatial_dims, self.K = channel, spatial_dims, K
        self.padding, self.window = padding, window

    @property
    def win(self) -> _torch.Tensor:
        """The taps in pytorch-msssim's layout (channel, 1, [1,] 1, win_size), for code that reads
        ``.win``; forward builds (and caches) its own on the input's device."""
        taps = _sa.taps(self.window, self.win_size, float(self.win_sigma), _torch.device("cpu"), _torch.float32)
        return taps.reshape((1, 1) + (1,) * (self.spatial_dims - 1) + (self.win_size,)).repeat(
            (self.channel, 1) + (1,) * self.spatial_dims)

    def _check(self, X: _torch.Tensor) -> None:
        if isinstance(X, _torch.Tensor) and X.dim() >= 2 and X.shape[1] != self.channel:
            raise ValueError(f"X has {X.shape[1]} channels but the module was built with channel={self.channel}")

    def _kw(self) -> dict:
        return dict(data_range=self.data_range, win_size=self.win_size, win_sigma=self.win_sigma, K=self.K,
                    padding=self.padding, window=self.window)


class SSIM(_SSIMBase):
    """Module form of :func:`pyaeplus.ssim`; a drop-in for ``pytorch_msssim.SSIM`` (same
    constructor arguments and defaults, plus ``padding``, ``window`` and ``reduction``).
    Every argument is checked here; ``channel`` is checked against the inputs' channel count."""

    def __init__(self, data_range: float = 255, size_average: bool = True, win_size: int = 11,
                 win_sigma: float = 1.5, channel: int = 3, spatial_dims: int = 2,
                 K: _Sequence[float] = (0.01, 0.03), nonnegative_ssim: bool = False, *, padding: str = "valid",
                 window: str = "gaussian", reduction: _Optional[str] = None) -> None:
        super().__init__(data_range, win_size, win_sigma, channel, spatial_dims, K, padding, window)
        _check_flag("size_average", size_average)
        _check_flag("nonnegative_ssim", nonnegative_ssim)
        _check_reduction(reduction, allow_none=True)
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
        _check_flag("size_average", size_average)
        _check_weights(weights)
        _check_reduction(reduction, allow_none=True)
        self.size_average, self.weights, self.reduction = size_average, weights, reduction

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        self._check(X)
        return _F.ms_ssim(X, Y, size_average=self.size_average, weights=self.weights, reduction=self.reduction,
                          **self._kw())


class _SSIMLossBase(_torch.nn.Module):
    def __init__(self, data_range, win_size, win_sigma, K, padding, window, reduction, **extra):
        super().__init__()
        _check_ssim_options(data_range, win_size, win_sigma, K, padding, window)
        _check_reduction(reduction, allow_none=False)
        self.kw = dict(extra, data_range=data_range, win_size=win_size, win_sigma=win_sigma, K=K, padding=padding,
                       window=window, reduction=reduction)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kw.items())


class SSIMLoss(_SSIMLossBase):
    """``1 - SSIM(X, Y)`` (:func:`pyaeplus.functional.ssim_loss`); defaults for images in [0, 1].

    Options are keyword-only: ``SSIMLoss(5)`` is a TypeError (kornia's and piq's first argument
    is the window size, pytorch-msssim's the data range). Under ``torch.autocast`` the loss is
    float32 (autocast's float32-list losses do the same)."""

    def __init__(self, *, data_range: float = 1.0, win_size: int = 11, win_sigma: float = 1.5,
                 K: _Sequence[float] = (0.01, 0.03), padding: str = "valid", window: str = "gaussian",
                 reduction: str = "mean") -> None:
        super().__init__(data_range, win_size, win_sigma, K, padding, window, reduction)

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        return _F.ssim_loss(X, Y, **self.kw)


class MS_SSIMLoss(_SSIMLossBase):
    """``1 - MS-SSIM(X, Y)`` (:func:`pyaeplus.ms_ssim`); defaults for images in [0, 1]; options
    keyword-only, ``weights`` as in :func:`pyaeplus.ms_ssim`."""

    def __init__(self, *, data_range: float = 1.0, win_size: int = 11, win_sigma: float = 1.5,
                 weights: _Optional[_List[float]] = None, K: _Sequence[float] = (0.01, 0.03),
                 padding: str = "valid", window: str = "gaussian", reduction: str = "mean") -> None:
        _check_weights(weights)
        super().__init__(data_range, win_size, win_sigma, K, padding, window, reduction, weights=weights)

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        return 1 - _F.ms_ssim(X, Y, **self.kw)


class L1SSIMLoss(_SSIMLossBase):
    """``(1 - alpha) * L1 + alpha * (1 - SSIM)`` from one kernel pass
    (:func:`pyaeplus.functional.l1_ssim_loss`); options keyword-only."""

    def __init__(self, *, alpha: float = 0.84, data_range: float = 1.0, win_size: int = 11,
                 win_sigma: float = 1.5, K: _Sequence[float] = (0.01, 0.03), padding: str = "valid",
                 window: str = "gaussian", reduction: str = "mean") -> None:
        alpha = _v.number("alpha", alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__(data_range, win_size, win_sigma, K, padding, window, reduction, alpha=alpha)

    def forward(self, X: _torch.Tensor, Y: _torch.Tensor) -> _torch.Tensor:
        return _F.l1_ssim_loss(X, Y, **self.kw)


__all__ += ["SSIM", "MS_SSIM", "SSIMLoss", "MS_SSIMLoss", "L1SSIMLoss"]


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

    def __init__(self, *, lam: float = 1.0, normalization=None, reduction: str = "sum"):
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
