"""Drop-in functions: validation here, then the custom ops in ``pyaeplus.ops``.

Every public function checks its arguments (shape, dtype, device, range, finite values when
``pyaeplus.config.check_finite``) and raises ValueError/TypeError naming the argument before
any kernel runs.
"""

from __future__ import annotations

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------

# ---- sparse decoder ---------------------------------------------------------------------

# ---- SSIM / MS-SSIM ---------------------------------------------------------------------

# ---- graph-Laplacian regularization ------------------------------------------------------

import torch as _torch_lap  # noqa: E402

from . import _validate as _v_lap  # noqa: E402
from .graph.csr import Graph as _Graph  # noqa: E402
from .ops import laplacian as _ops_lap  # noqa: E402  (registers pyaeplus::laplacian_loss*)

_LAP_REDUCTIONS = {"none": _ops_lap.RED_NONE, "sum": _ops_lap.RED_SUM, "mean": _ops_lap.RED_MEAN}


def laplacian_loss(z, graph, *, normalization=None, reduction="sum"):
    """Graph-Laplacian regularizer over a weighted graph, loss and gradient in one fused pass.

    ``L = sum_i sum_{j in row i} W_ij ||z_i - z_j||^2`` over the CSR as given. A symmetric graph
    stores each undirected edge twice, so there ``L = 2 tr(Zᵀ (D - W) Z)``.

    * ``normalization="rw"``: ``W_ij / d_i`` with ``d_i = sum_j W_ij`` (row sums);
    * ``normalization="sym"``: ``sum_ij W_ij ||z_i/sqrt(d_i) - z_j/sqrt(d_j)||^2``.

    Nodes of zero degree are scaled by 0 (no division by zero). The forward computes the
    per-node losses and, when ``z`` requires grad, the gradient in the same row-parallel pass
    over ``W + Wᵀ`` (built once per graph and normalization, cached on ``graph``); the backward
    only scales that gradient by ``grad_output``. No float atomics: results are deterministic.

    Args:
        z: (N, d) float32 / float16 / bfloat16 / float64 latents; accumulation is float32
            (float64 for float64).
        graph: :class:`pyaeplus.graph.Graph` with ``num_nodes == N`` on ``z``'s device
            (``graph.to(z.device)``). Under ``torch.compile`` call ``graph.prepare(normalization)``
            once before compiling (it builds the cached operands with data-dependent shapes).
        normalization: ``None``, ``"sym"`` or ``"rw"``.
        reduction: ``"sum"`` (default), ``"mean"`` (sum divided by the number of stored edges
            ``graph.nnz``) or ``"none"``: (N,) per-node losses where each edge term is split
            equally between its endpoints (for a symmetric graph: node i's row sum), summing to
            the ``"sum"`` loss.

    Returns:
        Scalar (``"sum"``/``"mean"``) or (N,) (``"none"``) tensor, float32 (float64 for float64 ``z``).
    """
    _v_lap.tensor("z", z, ndim=2)
    if not isinstance(graph, _Graph):
        raise TypeError(f"graph must be a pyaeplus.graph.Graph, got {type(graph).__name__}")
    _v_lap.choice("normalization", normalization, (None, "sym", "rw"))
    red = _LAP_REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if red is None:
        raise ValueError(f"reduction must be one of ('none', 'sum', 'mean'), got {reduction!r}")
    if graph.num_nodes != z.shape[0]:
        raise ValueError(f"graph has {graph.num_nodes} nodes but z has {z.shape[0]} rows; they must match")
    if graph.device != z.device:
        raise ValueError(f"graph is on {graph.device} but z is on {z.device}; move it with graph.to(z.device)")
    _v_lap.finite("z", z)
    indptr, indices, weights, scale = graph._grad_csr(normalization)
    need_grad = z.requires_grad and _torch_lap.is_grad_enabled()
    loss, _ = _ops_lap.laplacian_loss(z, indptr, indices, weights, scale, red, float(max(graph.nnz, 1)), need_grad)
    return loss


__all__ += ["laplacian_loss"]
