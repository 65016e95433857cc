"""Pure-PyTorch top-k sparse activation: the specification of ``pyaeplus.topk_activation``.

Selection, for each row of a (B, D) tensor:

* the k entries with the largest values are kept, ordered by value descending; equal values
  are ordered by ascending index, so at the k-th boundary the lowest index wins;
* ``-0.0`` and ``+0.0`` compare equal; NaN compares larger than every number (``+inf``
  included), as in ``torch.topk``, and NaNs tie among themselves (lowest index first);
* with ``relu=True`` the selection is still made on ``x``, and ReLU is then applied to the
  selected values (the OpenAI sparse_autoencoder convention); the gradient is masked where
  the selected value is ``<= 0``.

Everything here is written with ordinary differentiable PyTorch ops, so it is also the
autograd oracle of the tests. Functions are named after the custom ops in
``pyaeplus/ops/topk.py``; their forward ops compute without autograd (the ops register the
backward explicitly) and the ``*_backward`` functions are the backward ops' reference bodies.
"""

from __future__ import annotations

import torch


def select(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k), int64, of the top-k of each row of x (B, D): value descending, ties
    by ascending index. A stable descending sort gives exactly that order (torch sorts NaN
    above +inf and treats -0.0 == +0.0)."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


def topk_sparse(x: torch.Tensor, k: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, D) -> (values (B, k) in x's dtype, indices (B, k) int64), sorted as `select`."""
    idx = select(x, k)
    vals = x.gather(-1, idx)
    if relu:
        vals = torch.relu(vals)
    return vals, idx


def topk_dense(x: torch.Tensor, k: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, D) -> (y (B, D) with the k selected (ReLU'd) values and zeros elsewhere,
    indices (B, k) int64 of the selected entries, for the backward)."""
    vals, idx = topk_sparse(x, k, relu)
    y = torch.zeros_like(x).scatter(-1, idx, vals)
    return y, idx


def topk_sparse_backward(grad_values: torch.Tensor, indices: torch.Tensor, values: torch.Tensor | None,
                         D: int) -> torch.Tensor:
    """grad_values (B, k), indices (B, k), values (B, k) or None (no ReLU) -> grad_x (B, D).

    grad_x[r, indices[r, j]] = grad_values[r, j] (times [values[r, j] > 0] with ReLU); zero
    elsewhere."""
    g = grad_values
    if values is not None:
        g = torch.where(values > 0, g, torch.zeros_like(g))
    out = torch.zeros(grad_values.shape[:-1] + (D,), dtype=grad_values.dtype, device=grad_values.device)
    return out.scatter(-1, indices, g)


def topk_dense_backward(grad_y: torch.Tensor, indices: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """grad_y (B, D), indices (B, k), y (B, D) or None (no ReLU) -> grad_x (B, D).

    grad_x = grad_y on the selected entries (where y > 0 with ReLU), zero elsewhere."""
    g = grad_y.gather(-1, indices)
    vals = None if y is None else y.gather(-1, indices)
    return topk_sparse_backward(g, indices, vals, grad_y.shape[-1])


def topk_activation(x: torch.Tensor, k: int, *, relu: bool = False, output: str = "dense",
                    batch: bool = False, sparse_format: str = "coo"):
    """Differentiable reference of ``pyaeplus.topk_activation`` (training-mode k; no input
    checks). Per-row: dense (*, D) or ``(values (*, k), indices (*, k))``. ``batch=True``
    (BatchTopK): the top ``k * B`` entries of the whole flattened (B, D) batch, ties by
    ascending flat index; dense (B, D), or sparse sorted by (row, column): ``"coo"`` ->
    ``(values, rows, cols)``, ``"csr"`` -> ``(values, crow (B + 1,), cols)``."""
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    B = x2.shape[0]
    if batch:
        flat = x2.reshape(1, B * D)
        idx = select(flat, k * B)
        vals = flat.gather(-1, idx)
        if relu:
            vals = torch.relu(vals)
        if output == "dense":
            return torch.zeros_like(flat).scatter(-1, idx, vals).reshape(x.shape)
        order = torch.argsort(idx[0])
        fidx = idx[0][order]
        vals = vals[0][order]
        rows, cols = fidx // D, fidx % D
        if sparse_format == "coo":
            return vals, rows, cols
        crow = torch.searchsorted(fidx, torch.arange(B + 1, device=x.device) * D)
        return vals, crow, cols
    idx = select(x2, k)
    vals = x2.gather(-1, idx)
    if relu:
        vals = torch.relu(vals)
    if output == "dense":
        return torch.zeros_like(x2).scatter(-1, idx, vals).reshape(x.shape)
    return vals.reshape(x.shape[:-1] + (k,)), idx.reshape(x.shape[:-1] + (k,))
