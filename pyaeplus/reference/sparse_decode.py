"""PyTorch implementation of ``pyaeplus.sparse_decode`` and its gradients (the spec and oracle).

``out[b] = sum_j values[b, j] * weight[indices[b, j]] (+ bias)`` with values/indices (B, k),
weight (D, N), bias (N,) or None, out (B, N) in values' dtype. Accumulation is float32
(float64 for float64 inputs). Duplicate indices in a row add up.
"""

from __future__ import annotations

import torch

from .._amp import acc_dtype as _acc_dtype


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference forward; differentiable through PyTorch autograd. values/indices: (B, k)."""
    acc = _acc_dtype(values.dtype)
    rows = weight.to(acc)[indices.long()]                              # [B, k, N]
    out = (values.to(acc).unsqueeze(-1) * rows).sum(dim=1)             # [B, N]
    if bias is not None:
        out = out + bias.to(acc)
    return out.to(values.dtype)


def sparse_decode_grad_values(grad_out: torch.Tensor, indices: torch.Tensor,
                              weight: torch.Tensor) -> torch.Tensor:
    """grad_values[b, j] = <grad_out[b], weight[indices[b, j]]>  -> (B, k) in weight's dtype."""
    acc = _acc_dtype(weight.dtype)
    rows = weight.to(acc)[indices.long()]                              # [B, k, N]
    return (rows * grad_out.to(acc).unsqueeze(1)).sum(-1).to(weight.dtype)


def sparse_decode_grad_weight(grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                              weight: torch.Tensor) -> torch.Tensor:
    """grad_weight[i] = sum over (b, j) with indices[b, j] == i of values[b, j] * grad_out[b]
    -> (D, N) in weight's dtype; rows no index touches are zero."""
    acc = _acc_dtype(weight.dtype)
    B, k = indices.shape
    contrib = values.to(acc).unsqueeze(-1) * grad_out.to(acc).unsqueeze(1)   # [B, k, N]
    gw = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    gw.index_add_(0, indices.reshape(-1).long(), contrib.reshape(B * k, -1))
    return gw.to(weight.dtype)


def sparse_decode_reverse_index(indices: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse index the GPU grad_weight kernels walk: ``order`` (B*k,) int64, the flat
    positions ``b*k + j`` sorted stably by latent row, and ``indptr`` (D+1,) int64 so that the
    entries of row i are ``order[indptr[i]:indptr[i+1]]`` (in increasing b*k+j: a fixed order,
    hence deterministic sums). Built with a stable sort and a binary search: no atomics."""
    flat = indices.reshape(-1).long()
    sorted_rows, order = torch.sort(flat, stable=True)
    bounds = torch.arange(num_rows + 1, device=indices.device, dtype=sorted_rows.dtype)
    indptr = torch.searchsorted(sorted_rows, bounds)
    return order, indptr
