"""``nn.Module`` wrappers: configuration in ``__init__``, one call into
``pyaeplus.functional`` in ``forward``."""

from __future__ import annotations

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------

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
