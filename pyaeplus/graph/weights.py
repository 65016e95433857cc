"""Edge weights for k-NN graphs: heat kernel, binary, and symmetrization of a weighted CSR.

All functions are vectorized torch code (no Python loop over nodes) and run on the device of
their inputs.
"""

from __future__ import annotations

import torch

from .. import _validate

__all__ = ["heat_kernel", "binary_weights", "median_kth_distance", "symmetrize", "coalesce"]


def median_kth_distance(distances: torch.Tensor) -> float:
    """Median over rows of the distance to the last (k-th) valid neighbour.

    Entries that are not finite (FAISS pads missing neighbours with +inf / -1 indices) are
    ignored; a row with no finite entry does not take part.
    """
    d = distances.to(torch.float64)
    finite = torch.isfinite(d)
    has = finite.any(dim=1)
    if not bool(has.any()):
        raise ValueError("distances has no finite entry; cannot choose sigma")
    # index of the last finite entry of each row (neighbours are sorted by distance)
    pos = torch.arange(d.shape[1], device=d.device).expand_as(d)
    last = torch.where(finite, pos, torch.full_like(pos, -1)).amax(dim=1)
    kth = d[has].gather(1, last[has, None]).squeeze(1)
    return float(kth.median())


def heat_kernel(distances: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Heat-kernel weights ``exp(-d^2 / sigma^2)``.

    Args:
        distances: (N, k) or (nnz,) floating tensor of distances (non-finite entries map to 0).
        sigma: bandwidth > 0; ``None`` uses the median k-th neighbour distance of a (N, k)
            input (:func:`median_kth_distance`), or the median of a 1-d input. A median of 0
            (many duplicate points) falls back to the mean positive distance, then to 1.

    Returns:
        float32 tensor of the shape of ``distances`` with values in [0, 1].
    """
    _validate.tensor("distances", distances, ndim=(1, 2))
    if sigma is None:
        sigma = median_kth_distance(distances if distances.dim() == 2 else distances[:, None])
        if not sigma > 0:
            pos = distances[torch.isfinite(distances) & (distances > 0)]
            sigma = float(pos.double().mean()) if pos.numel() else 1.0
    else:
        sigma = _validate.number("sigma", sigma, positive=True)
    d = distances.to(torch.float32)
    w = torch.exp(-(d * d) / (sigma * sigma))
    return torch.where(torch.isfinite(d), w, torch.zeros_like(w))


def binary_weights(distances: torch.Tensor) -> torch.Tensor:
    """1 for every finite distance, 0 for padding (non-finite) entries; float32, same shape."""
    _validate.tensor("distances", distances, ndim=(1, 2))
    return torch.isfinite(distances).to(torch.float32)


def coalesce(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, num_nodes: int,
             reduce: str = "sum") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort edges into CSR order (by row, then column) and merge duplicates.

    Args:
        rows, cols: (E,) int64 endpoints; weights: (E,) float.
        num_nodes: N.
        reduce: how duplicate (row, col) weights merge: ``"sum"``, ``"max"`` or ``"mean"``.

    Returns:
        ``(indptr (N+1,), indices (nnz,), weights (nnz,))``.
    """
    _validate.choice("reduce", reduce, ("sum", "max", "mean"))
    dev = rows.device
    key = rows * num_nodes + cols
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    w = weights.new_zeros(uniq.numel())
    if reduce == "max":
        w = w.scatter_reduce(0, inv, weights, reduce="amax", include_self=False)
    else:
        w = w.index_add(0, inv, weights)
        if reduce == "mean":
            cnt = torch.zeros(uniq.numel(), dtype=weights.dtype, device=dev).index_add_(
                0, inv, torch.ones_like(weights))
            w = w / cnt
    r = torch.div(uniq, num_nodes, rounding_mode="floor")
    c = uniq - r * num_nodes
    counts = torch.bincount(r, minlength=num_nodes)
    indptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.cumsum(counts, 0)
    return indptr, c, w


def symmetrize(indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, num_nodes: int,
               mode: str = "max") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric CSR from a directed weighted CSR (e.g. a k-NN graph).

    Args:
        indptr (N+1,), indices (nnz,), weights (nnz,): the directed graph W.
        num_nodes: N.
        mode: ``"max"``: ``W_ij = max(W_ij, W_ji)`` (an edge present in one direction keeps
            its weight); ``"mean"``: ``(W_ij + W_ji) / 2`` with a missing direction counting
            as 0 (a one-sided edge keeps half its weight).

    Returns:
        ``(indptr, indices, weights)`` of the symmetric graph, columns sorted within rows.
    """
    _validate.choice("mode", mode, ("max", "mean"))
    rows = torch.repeat_interleave(torch.arange(num_nodes, device=indptr.device), indptr.diff())
    # Duplicate (row, col) pairs in the input are merged first (summed), so that each
    # direction of an edge appears once before the two directions are combined.
    ip, ix, w = coalesce(rows, indices, weights, num_nodes, "sum")
    rows = torch.repeat_interleave(torch.arange(num_nodes, device=indptr.device), ip.diff())
    r2 = torch.cat([rows, ix])
    c2 = torch.cat([ix, rows])
    w2 = torch.cat([w, w])
    if mode == "max":
        return coalesce(r2, c2, w2, num_nodes, "max")
    # "mean": a self-loop (i, i) appears twice above with the same weight: sum / 2 keeps it.
    ip, ix, ws = coalesce(r2, c2, w2, num_nodes, "sum")
    return ip, ix, ws * 0.5
