"""PyTorch implementation of ``pyaeplus.topk_encode`` and its gradients (the spec and oracle).

The fused top-k encoder of a k-sparse autoencoder: ``pre = x @ weight.T + bias`` (weight in
``nn.Linear``'s (D, N) layout: D latents, N input features), then the top-k of each row of
``pre`` as ``pyaeplus.reference.topk`` selects it (value descending, ties by ascending index,
ReLU applied to the kept values when ``relu``). ``pre`` is computed in x's dtype (as
``F.linear`` does); the selection then follows the top-k spec exactly.

The backward touches only the selected entries. With the selected entries given in CSR form by
batch row (``crow`` (B + 1,), ``cols`` (E,) latent of each entry, ``grad`` (E,) the gradient of
each entry, ReLU mask already applied):

* ``grad_x[b] = sum_{p in row b} grad[p] * weight[cols[p]]`` (B*k*N work instead of B*D*N);
* ``grad_weight[i] = sum_{p: cols[p] == i} grad[p] * x[row(p)]`` and ``grad_bias[i] = sum grad[p]``
  over the same entries (rows no entry selects are zero).

Per-row top-k is the CSR with ``crow = [0, k, 2k, ...]``; BatchTopK (the top ``k * B`` entries
of the whole batch) has a variable number of entries per row. Accumulation is float32 (float64
for float64 inputs).
"""

from __future__ import annotations

import torch

from . import topk as _topk
from .._amp import acc_dtype as _acc_dtype


def pre_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, N), weight (D, N), bias (D,) or None -> (B, D) in x's dtype."""
    return torch.nn.functional.linear(x, weight, bias)


def topk_encode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int,
                relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (values (B, k), indices (B, k) int64), sorted as ``reference.topk.select``."""
    return _topk.topk_sparse(pre_activation(x, weight, bias), k, relu)


def batch_topk_encode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int,
                      relu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchTopK: the top ``k * B`` entries of the whole (B, D) pre-activation, as COO sorted by
    (row, column): (values (k*B,), rows (k*B,) int64, cols (k*B,) int64)."""
    return _topk.topk_activation(pre_activation(x, weight, bias), k, relu=relu, batch=True, output="sparse",
                                 sparse_format="coo")


def entry_rows(crow: torch.Tensor, num_entries: int) -> torch.Tensor:
    """The batch row of each of the ``num_entries`` CSR entries (E,) int64 (no host sync)."""
    pos = torch.arange(num_entries, device=crow.device, dtype=crow.dtype)
    return torch.searchsorted(crow, pos, right=True) - 1


def grad_input(grad: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad (E,), crow (B+1,), cols (E,), weight (D, N) -> grad_x (B, N) in weight's dtype."""
    acc = _acc_dtype(weight.dtype)
    B, N = crow.shape[0] - 1, weight.shape[1]
    rows = entry_rows(crow, cols.shape[0])
    contrib = grad.to(acc).unsqueeze(1) * weight.to(acc)[cols]                 # [E, N]
    out = torch.zeros((B, N), dtype=acc, device=weight.device).index_add_(0, rows, contrib)
    return out.to(weight.dtype)


def grad_weight(grad: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor, x: torch.Tensor,
                D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """grad (E,), crow (B+1,), cols (E,), x (B, N) -> (grad_weight (D, N), grad_bias (D,)) in x's dtype."""
    acc = _acc_dtype(x.dtype)
    rows = entry_rows(crow, cols.shape[0])
    g = grad.to(acc)
    gw = torch.zeros((D, x.shape[1]), dtype=acc, device=x.device).index_add_(0, cols, g.unsqueeze(1) * x.to(acc)[rows])
    gb = torch.zeros((D,), dtype=acc, device=x.device).index_add_(0, cols, g)
    return gw.to(x.dtype), gb.to(x.dtype)
