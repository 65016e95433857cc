"""``nn.Module`` wrappers: configuration in ``__init__``, one call into
``pyaeplus.functional`` in ``forward``."""

from __future__ import annotations

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------

import torch as _torch  # noqa: E402

from . import functional as _F  # noqa: E402


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

import math as _math_sd  # noqa: E402

import torch as _torch_sd  # noqa: E402

from . import functional as _F_sd  # noqa: E402

__all__ += ["SparseDecoder"]


class SparseDecoder(_torch_sd.nn.Module):
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
        self.num_latents = int(num_latents)
        self.out_features = int(out_features)
        if self.num_latents < 1 or self.out_features < 1:
            raise ValueError(f"num_latents and out_features must be >= 1, got {num_latents}, {out_features}")
        kw = {"device": device, "dtype": dtype}
        self.weight = _torch_sd.nn.Parameter(_torch_sd.empty(self.num_latents, self.out_features, **kw))
        if bias:
            self.bias = _torch_sd.nn.Parameter(_torch_sd.empty(self.out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear(num_latents, out_features): kaiming_uniform(a=sqrt(5)) -> U(±1/sqrt(fan_in)).
        bound = 1.0 / _math_sd.sqrt(self.num_latents)
        _torch_sd.nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            _torch_sd.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, values, indices=None):
        if indices is None:
            if not isinstance(values, (tuple, list)) or len(values) != 2:
                raise TypeError("SparseDecoder.forward takes (values, indices) or one (values, indices) pair, "
                                f"got {type(values).__name__}")
            values, indices = values
        return _F_sd.sparse_decode(values, indices, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"num_latents={self.num_latents}, out_features={self.out_features}, bias={self.bias is not None}"


# ---- SSIM / MS-SSIM ---------------------------------------------------------------------

# ---- graph-Laplacian regularization ------------------------------------------------------

import torch as _torch_lap  # noqa: E402

from . import functional as _F_lap  # noqa: E402


class LaplacianRegularizer(_torch_lap.nn.Module):
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

    def forward(self, z: _torch_lap.Tensor, graph) -> _torch_lap.Tensor:
        return self.lam * _F_lap.laplacian_loss(z, graph, normalization=self.normalization, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, normalization={self.normalization!r}, reduction={self.reduction!r}"


__all__ += ["LaplacianRegularizer"]
