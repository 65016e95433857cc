"""Pure-PyTorch graph-Laplacian regularizer: the specification and the test oracle.

``laplacian_loss`` states the loss on the graph W as given; ``laplacian_rows_grad`` states what
the fused kernels compute from the symmetric operand CSR S (``Graph._grad_csr``) and is the
``"torch"`` backend of the custom ops.
"""

from __future__ import annotations

import torch

from .._amp import acc_dtype as _acc

REDUCTIONS = ("none", "sum", "mean")


def laplacian_loss(z: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                   normalization: str | None = None, reduction: str = "sum") -> torch.Tensor:
    """``L = sum_i sum_{j in row i} w_ij ||s_i z_i - s_j z_j||^2`` over the CSR W as given.

    ``None``: w = W, s = 1. ``"rw"``: w_ij = W_ij / d_i, s = 1. ``"sym"``: w = W, s_i = 1/sqrt(d_i)
    (d = row sums; zero degree -> s = 0 / no edges). ``"none"`` reduction gives (N,) node losses
    in which each edge term is split equally between its two endpoints (for a symmetric W this is
    the row sum over node i's edges); ``"mean"`` divides the sum by nnz. Computed in float32
    (float64 for float64 input) with autograd; returns that dtype.
    """
    n = z.shape[0]
    acc = _acc(z.dtype)
    zf = z.to(acc)
    rows = torch.repeat_interleave(torch.arange(n, device=z.device), indptr.diff())
    w = weights.to(acc)
    d = torch.zeros(n, dtype=acc, device=z.device).index_add_(0, rows, w)
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    if normalization == "rw":
        w = w * inv[rows]
    y = zf * inv.sqrt()[:, None] if normalization == "sym" else zf
    term = w * (y[rows] - y[indices]).pow(2).sum(1)  # (nnz,)
    if reduction == "none":
        out = torch.zeros(n, dtype=acc, device=z.device)
        return out.index_add(0, rows, 0.5 * term).index_add(0, indices, 0.5 * term)
    total = term.sum()
    return total / max(indices.numel(), 1) if reduction == "mean" else total


def laplacian_rows_grad(z: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                        scale: torch.Tensor | None, row_weight: torch.Tensor | None, grad_scale: float,
                        need_rows: bool, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What the fused kernels compute, from the symmetric operand CSR S (no autograd).

    With y = s * z (s = ``scale`` or 1) and g = ``row_weight`` (or 1):
      rows_i = 1/2 sum_j S_ij ||y_i - y_j||^2                          (N,)  acc dtype
      grad_i = grad_scale * s_i * sum_j S_ij (g_i + g_j) (y_i - y_j)   (N, d) z.dtype
    so that grad = d(sum_i g_i rows_i)/dz * grad_scale. Outputs not asked for are empty
    (rows: (0,), grad: (0, d)).
    """
    n, dim = z.shape
    acc = _acc(z.dtype)
    with torch.no_grad():
        zf = z.to(acc)
        rows_idx = torch.repeat_interleave(torch.arange(n, device=z.device), indptr.diff())
        s = scale.to(acc) if scale is not None else None
        y = zf * s[:, None] if s is not None else zf
        diff = y[rows_idx] - y[indices]  # (nnz, d)
        w = weights.to(acc)
        rows = (torch.zeros(n, dtype=acc, device=z.device).index_add_(0, rows_idx, 0.5 * w * diff.pow(2).sum(1))
                if need_rows else torch.empty(0, dtype=acc, device=z.device))
        if need_grad:
            if row_weight is not None:
                g = row_weight.to(acc)
                c = w * (g[rows_idx] + g[indices])
            else:
                c = 2.0 * w
            gr = torch.zeros(n, dim, dtype=acc, device=z.device).index_add_(0, rows_idx, c[:, None] * diff)
            if s is not None:
                gr = gr * s[:, None]
            grad = (gr * grad_scale).to(z.dtype)
        else:
            grad = z.new_empty(0, dim)
    return rows, grad
