"""Triton kernel of the fused graph-Laplacian loss + gradient (see ``reference/laplacian.py``,
``laplacian_rows_grad``, for the exact statement).

One program per row i of the symmetric operand CSR S: it gathers the rows z_j of a block of
BLOCK_E neighbours at a time as a (BLOCK_E, BLOCK_D) tile, and accumulates both the row's loss
share and its gradient in registers; every program writes only its own row, so there are no
atomics and the result is deterministic.

Memory safety without a sync (direct callers of the op): each row's edge range is clamped to
[0, nnz] and indices outside [0, N) are masked (weight 0, no gather), so a malformed CSR gives a
wrong loss, never an out-of-bounds access. ``pyaeplus.graph.Graph`` validates the values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._amp import acc_dtype as _acc


@triton.jit
def _laplacian_rows_grad_kernel(
    z_ptr, sz0,            # z: [N, D] (row stride sz0, unit inner stride)
    indptr_ptr,            # [N + 1] int64
    indices_ptr,           # [nnz] int64
    weights_ptr,           # [nnz] float32 (S_ij)
    scale_ptr,             # [N] float32 (s) when HAS_SCALE
    roww_ptr,              # [N] acc dtype (g) when HAS_ROWW
    rows_ptr,              # [N] acc dtype out when NEED_ROWS
    grad_ptr,              # [N, D] z dtype out (contiguous) when NEED_GRAD
    N, NNZ, D, grad_scale,
    HAS_SCALE: tl.constexpr, HAS_ROWW: tl.constexpr, NEED_ROWS: tl.constexpr, NEED_GRAD: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    start = tl.minimum(tl.maximum(tl.load(indptr_ptr + i), 0), NNZ)
    end = tl.minimum(tl.maximum(tl.load(indptr_ptr + i + 1), start), NNZ)
    if HAS_SCALE:
        si = tl.load(scale_ptr + i).to(ACC)
    else:
        si = tl.full((), 1.0, ACC)
    if HAS_ROWW:
        gi = tl.load(roww_ptr + i).to(ACC)
    else:
        gi = tl.full((), 1.0, ACC)
    row_acc = tl.zeros([BLOCK_E], dtype=ACC)
    offs_e0 = tl.arange(0, BLOCK_E)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        md = offs_d < D
        yi = tl.load(z_ptr + i * sz0 + offs_d, mask=md, other=0.0).to(ACC) * si
        acc = tl.zeros([BLOCK_D], dtype=ACC)
        for e0 in range(start, end, BLOCK_E):
            offs_e = e0 + offs_e0
            j = tl.load(indices_ptr + offs_e, mask=offs_e < end, other=0)
            me = (offs_e < end) & (j >= 0) & (j < N)  # out-of-range indices are masked edges
            j = tl.where(me, j, 0)
            # masked edges get w = 0, so their (meaningless) diff contributes nothing
            w = tl.load(weights_ptr + offs_e, mask=me, other=0.0).to(ACC)
            zj = tl.load(z_ptr + j[:, None] * sz0 + offs_d[None, :], mask=me[:, None] & md[None, :],
                         other=0.0).to(ACC)
            if HAS_SCALE:
                sj = tl.load(scale_ptr + j, mask=me, other=0.0).to(ACC)
                diff = yi[None, :] - sj[:, None] * zj
            else:
                diff = yi[None, :] - zj
            row_acc += w * tl.sum(diff * diff, axis=1)
            if NEED_GRAD:
                if HAS_ROWW:
                    gj = tl.load(roww_ptr + j, mask=me, other=0.0).to(ACC)
                    c = w * (gi + gj)
                else:
                    c = 2.0 * w
                acc += tl.sum(c[:, None] * diff, axis=0)
        if NEED_GRAD:
            g = acc * (si * grad_scale)
            tl.store(grad_ptr + i * D + offs_d, g.to(grad_ptr.dtype.element_ty), mask=md)
    if NEED_ROWS:
        tl.store(rows_ptr + i, 0.5 * tl.sum(row_acc, axis=0))


def laplacian_rows_grad(z: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                        scale: torch.Tensor | None, row_weight: torch.Tensor | None, grad_scale: float,
                        need_rows: bool, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: rows (N,) acc dtype and grad (N, d) z.dtype (empty when not asked for).

    z: (N, d) float32/float16/bfloat16/float64 (made unit-stride in d); indptr (N+1,), indices
    (nnz,) int64; weights (nnz,) float32; scale (N,) float32 or None; row_weight (N,) acc dtype
    or None; the 1-d operands contiguous. Bad index values are masked (see the module docstring).
    """
    if z.stride(1) != 1:
        z = z.contiguous()
    n, d = z.shape
    acc = _acc(z.dtype)
    rows = torch.empty(n if need_rows else 0, dtype=acc, device=z.device)
    grad = torch.empty((n, d) if need_grad else (0, d), dtype=z.dtype, device=z.device)
    if n == 0:
        return rows, grad
    block_d = min(triton.next_power_of_2(max(d, 1)), 128)
    block_e = 16 if block_d <= 64 else 8
    dummy = weights  # never read: the matching constexpr flag is off
    _laplacian_rows_grad_kernel[(n,)](
        z, z.stride(0), indptr, indices, weights,
        scale if scale is not None else dummy,
        row_weight if row_weight is not None else dummy,
        rows if need_rows else dummy,
        grad if need_grad else z,
        n, indices.shape[0], d, float(grad_scale),
        HAS_SCALE=scale is not None, HAS_ROWW=row_weight is not None, NEED_ROWS=need_rows,
        NEED_GRAD=need_grad, ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_E=block_e, BLOCK_D=block_d, num_warps=2 if block_d <= 64 else 4,
    )
    return rows, grad
