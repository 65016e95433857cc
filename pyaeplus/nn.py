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
