"""Drop-in functions: validation here, then the custom ops in ``pyaeplus.ops``.

Every public function checks its arguments (shape, dtype, device, range, finite values when
``pyaeplus.config.check_finite``) and raises ValueError/TypeError naming the argument before
any kernel runs.
"""

from __future__ import annotations

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------

from typing import NamedTuple as _NamedTuple  # noqa: E402

import torch as _torch  # noqa: E402

from . import _validate as _v  # noqa: E402
from .ops import topk as _topk_ops  # noqa: E402,F401  (registers pyaeplus::topk_*)


class TopKResult(_NamedTuple):
    """Sparse top-k output: ``values`` (*, k) and int64 ``indices`` (*, k) into the last dim."""

    values: _torch.Tensor
    indices: _torch.Tensor


class BatchTopKCOO(_NamedTuple):
    """Sparse BatchTopK output in COO form, entries sorted by (row, column)."""

    values: _torch.Tensor
    rows: _torch.Tensor
    cols: _torch.Tensor


class BatchTopKCSR(_NamedTuple):
    """Sparse BatchTopK output in CSR form: row r owns entries ``crow[r]:crow[r + 1]``."""

    values: _torch.Tensor
    crow: _torch.Tensor
    cols: _torch.Tensor


def _topk_eval_k(k: int, D: int, k_eval, alpha) -> int:
    if k_eval is not None:
        return _v.integer("k_eval", k_eval, lo=1, hi=D)
    if alpha is not None:
        return min(D, max(1, int(round(alpha * k))))
    return k


def topk_activation(x: _torch.Tensor, k: int, *, relu: bool = False, output: str = "dense", k_eval=None,
                    alpha=None, training: bool = True, batch: bool = False, sparse_format: str = "coo"):
    """Top-k sparse activation over the last dimension (k-sparse autoencoders).

    Each row (the last dimension of ``x``) keeps its ``k`` largest entries. Ties are broken
    deterministically: the lowest index wins at the k-th boundary, and sparse outputs list
    values descending, equal values by ascending index. With ``relu=True`` the selection is
    made on ``x`` and ReLU is applied to the selected values (OpenAI sparse_autoencoder
    convention; the gradient is zero where the selected value is ``<= 0``). The gradient
    flows to the selected entries only; the backward writes it in one pass.

    NaN policy: with ``pyaeplus.config.check_finite`` on (default) a NaN/Inf in ``x`` raises
    ValueError. With the check off (and under ``torch.compile``, which skips it) NaN counts as
    larger than ``+inf``, as in ``torch.topk``, so NaN entries are selected first (lowest
    index first); ``-0.0`` and ``+0.0`` tie.

    Args:
        x: (*, D) floating tensor (float32, float64, float16, bfloat16; any strides), at
            least 1-d, not empty.
        k: entries kept per row in training, an int in [1, D].
        relu: apply ReLU to the kept values.
        output: ``"dense"`` (same shape as ``x``, zeros elsewhere) or ``"sparse"``.
        k_eval: k used when ``training=False`` (Makhzani & Frey keep more units at
            inference), an int in [1, D]; takes precedence over ``alpha``.
        alpha: when ``training=False`` and no ``k_eval``: keep ``round(alpha * k)`` entries,
            clamped to [1, D]. A positive number.
        training: use ``k`` (True) or the inference rule above (False).
        batch: BatchTopK: keep the top ``k * B`` entries of the whole batch (``B`` = number of
            rows, ``x`` viewed as (B, D)) instead of k per row, ties by ascending flat index;
            rows get a variable number of entries.
        sparse_format: for ``batch=True, output="sparse"``: ``"coo"`` or ``"csr"``.

    Returns:
        ``output="dense"``: a tensor shaped like ``x``.
        ``output="sparse"``, per row: ``TopKResult(values (*, k), indices (*, k) int64)``.
        ``output="sparse"``, ``batch=True``, entries sorted by (row, column), ``nnz = k * B``:
        ``"coo"``: ``BatchTopKCOO(values (nnz,), rows (nnz,), cols (nnz,))``;
        ``"csr"``: ``BatchTopKCSR(values (nnz,), crow (B + 1,), cols (nnz,))``; indices int64.
        With ``relu=True`` the sparse outputs keep entries that ReLU set to 0.

    Raises:
        TypeError: ``x`` not a floating tensor, ``k``/``k_eval`` not an int, a flag not a bool.
        ValueError: ``x`` 0-d or empty or not finite, ``k``/``k_eval`` outside [1, D],
            ``alpha <= 0``, an unknown ``output``/``sparse_format``, ``x`` on an unsupported device.
    """
    _v.tensor("x", x, min_ndim=1)
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x must be on a cpu or cuda device, got {x.device}")
    D = x.shape[-1]
    k = _v.integer("k", k, lo=1, hi=D)
    for name, flag in (("relu", relu), ("training", training), ("batch", batch)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    _v.choice("output", output, ("dense", "sparse"))
    _v.choice("sparse_format", sparse_format, ("coo", "csr"))
    if alpha is not None:
        alpha = _v.number("alpha", alpha, positive=True)
    if k_eval is not None:
        _v.integer("k_eval", k_eval, lo=1, hi=D)
    _v.finite("x", x)
    if not training:
        k = _topk_eval_k(k, D, k_eval, alpha)

    x2 = x.reshape(-1, D)
    B = x2.shape[0]
    if not batch:
        if output == "dense":
            y, _ = _torch.ops.pyaeplus.topk_dense(x2, k, relu)
            return y.reshape(x.shape)
        vals, idx = _torch.ops.pyaeplus.topk_sparse(x2, k, relu)
        lead = tuple(x.shape[:-1])
        return TopKResult(vals.reshape(lead + (k,)), idx.reshape(lead + (k,)))

    # BatchTopK: the same kernels on the batch seen as one row of B * D entries (a global
    # threshold; ties by flat index, which is row-major order).
    flat = x2.reshape(1, B * D)
    if output == "dense":
        y, _ = _torch.ops.pyaeplus.topk_dense(flat, k * B, relu)
        return y.reshape(x.shape)
    vals, fidx = _torch.ops.pyaeplus.topk_sparse(flat, k * B, relu)
    # Row-major order of the kept entries, as consumers of COO/CSR expect.
    fidx, order = _torch.sort(fidx[0])
    vals = vals[0].gather(0, order)
    cols = fidx % D
    if sparse_format == "coo":
        return BatchTopKCOO(vals, _torch.div(fidx, D, rounding_mode="floor"), cols)
    crow = _torch.searchsorted(fidx, _torch.arange(B + 1, device=x.device, dtype=_torch.int64) * D)
    return BatchTopKCSR(vals, crow, cols)


__all__ += ["topk_activation", "TopKResult", "BatchTopKCOO", "BatchTopKCSR"]

# ---- sparse decoder ---------------------------------------------------------------------

import torch as _torch_sd  # noqa: E402

from . import _validate as _v_sd  # noqa: E402
from .ops import sparse_decode as _ops_sparse_decode  # noqa: E402,F401  (registers pyaeplus::sparse_decode)

__all__ += ["sparse_decode"]


def sparse_decode(values: _torch_sd.Tensor, indices: _torch_sd.Tensor, weight: _torch_sd.Tensor,
                  bias: _torch_sd.Tensor | None = None) -> _torch_sd.Tensor:
    """Decode sparse codes: ``out[..., :] = sum_j values[..., j] * weight[indices[..., j], :] + bias``.

    The fused gather-matmul of a top-k sparse autoencoder's decoder: the codes stay sparse
    (never a dense (B, D) tensor). Duplicate indices within a row add up. Accumulation is in
    float32 (float64 for float64 inputs). The gradient for ``weight`` is deterministic on every
    backend (a reverse index summed in a fixed order, no floating-point atomics); gradients flow
    to ``values``, ``weight`` and ``bias``.

    Args:
        values: (..., k) float32/float16/bfloat16/float64 code values, e.g. the ``values`` of
            ``pyaeplus.topk_activation(x, k, output="sparse")``. Leading dimensions are flattened
            and restored.
        indices: (..., k) int64 or int32 latent indices in ``[0, D)``, same shape as ``values``.
        weight: (D, d_out) decoder matrix, same dtype and device as ``values`` (the transpose of
            an ``nn.Linear(D, d_out)`` weight; row ``i`` is latent ``i``'s decoder direction).
        bias: optional (d_out,) bias, same dtype and device.

    Returns:
        (..., d_out) tensor in ``values``' dtype.

    Raises:
        TypeError: an argument is not a tensor or has the wrong dtype.
        ValueError: shapes disagree, devices differ, an index is outside ``[0, D)``, an input is
            empty, or (with ``pyaeplus.config.check_finite``) contains NaN/Inf. The index-range
            and finite checks are skipped while ``torch.compile`` traces; the kernels then
            bounds-check (CPU: raise) or mask (GPU: an out-of-range index contributes zero).
    """
    values = _v_sd.tensor("values", values, min_ndim=1)
    indices = _v_sd.tensor("indices", indices, min_ndim=1, dtypes=(_torch_sd.int64, _torch_sd.int32))
    weight = _v_sd.tensor("weight", weight, ndim=2)
    if bias is not None:
        bias = _v_sd.tensor("bias", bias, ndim=1)
    if weight.dtype != values.dtype:
        raise TypeError(f"weight must have the dtype of values ({values.dtype}), got {weight.dtype}")
    if bias is not None and bias.dtype != values.dtype:
        raise TypeError(f"bias must have the dtype of values ({values.dtype}), got {bias.dtype}")
    if indices.shape != values.shape:
        raise ValueError(f"indices must have the shape of values {tuple(values.shape)}, got {tuple(indices.shape)}")
    D, d_out = weight.shape
    if bias is not None and bias.shape[0] != d_out:
        raise ValueError(f"bias must have shape ({d_out},) to match weight {tuple(weight.shape)}, "
                         f"got {tuple(bias.shape)}")
    _v_sd.same_device(values=values, indices=indices, weight=weight, bias=bias)
    _v_sd.finite("values", values)
    _v_sd.finite("weight", weight)
    if bias is not None:
        _v_sd.finite("bias", bias)
    if not _v_sd._compiling():
        lo, hi = _torch_sd.aminmax(indices)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= D:
            raise ValueError(f"indices must lie in [0, {D}) (weight has {D} rows), got values in [{lo}, {hi}]")
    k = values.shape[-1]
    lead = values.shape[:-1]
    out = _torch_sd.ops.pyaeplus.sparse_decode(values.reshape(-1, k), indices.reshape(-1, k), weight, bias)
    return out.reshape(*lead, d_out)


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
