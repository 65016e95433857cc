"""Triton kernels of ``topk_encode``'s backward (the forward is cuBLAS + the top-k Triton kernel,
composed in ``pyaeplus/ops/topk_encode.py``).

The selected entries come as CSR by batch row (``crow`` (B+1,), ``cols`` (E,) latent of each
entry, ``grad`` (E,) their gradient, ReLU mask applied):

* ``grad_input``: ``grad_x[b] = sum_{p in row b} grad[p] * weight[cols[p]]``, one program per
  (batch row, column tile): B*k*N work instead of a dense (B, D) @ (D, N).
* ``grad_weight``: ``grad_weight[i] = sum_{p: cols[p] == i} grad[p] * x[row(p)]`` and
  ``grad_bias[i] = sum grad[p]``, one program per (latent row, column tile) walking the reverse
  index (entries sorted by latent, CSR ``indptr`` (D+1,)) in a fixed order: deterministic, no
  floating-point atomics. The launcher takes the reverse index ready-made (the op builds it).

Launchers take contiguous tensors and return fresh ones. Entry positions outside [0, E), latent
indices outside [0, D) and batch rows outside [0, B) are masked (they contribute 0), so a bad
index can never read out of bounds; the ops reject them before launching.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _segment_sum(g_ptr, idx_ptr, src_ptr, start, end, E, limit, ns, nmask, N, ACC: tl.constexpr,
                 BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    # Sum over the entries p in [start, end) (and in [0, E)) of g[p] * src[idx[p], ns]; an entry whose
    # idx is outside [0, limit) adds 0. g, idx: [E]; src: [limit, N]. Returns (the [BLOCK_N] sum, the
    # per-lane [BLOCK_E] sums of g).
    acc = tl.zeros((BLOCK_N,), dtype=ACC)
    gsum = tl.zeros((BLOCK_E,), dtype=ACC)
    for p0 in range(start, end, BLOCK_E):
        ps = p0 + tl.arange(0, BLOCK_E)
        pmask = (ps < end) & (ps >= 0) & (ps < E)
        idx = tl.load(idx_ptr + ps, mask=pmask, other=0).to(tl.int64)
        ok = pmask & (idx >= 0) & (idx < limit)
        g = tl.load(g_ptr + ps, mask=ok, other=0.0).to(ACC)
        rows = tl.load(src_ptr + idx[:, None] * N + ns[None, :], mask=ok[:, None] & nmask[None, :],
                       other=0.0).to(ACC)                                    # [BLOCK_E, BLOCK_N]
        acc += tl.sum(g[:, None] * rows, axis=0)
        gsum += g
    return acc, gsum


@triton.jit
def _grad_input_kernel(grad_ptr, crow_ptr, cols_ptr, weight_ptr, out_ptr, E, D, N, ACC: tl.constexpr,
                       BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    # grad, cols: [E]; crow: [B+1]; weight: [D, N]; out: [B, N]. One program: row b, N tile.
    b = tl.program_id(0).to(tl.int64)
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc, _ = _segment_sum(grad_ptr, cols_ptr, weight_ptr, tl.load(crow_ptr + b), tl.load(crow_ptr + b + 1), E, D,
                          ns, ns < N, N, ACC, BLOCK_E, BLOCK_N)
    tl.store(out_ptr + b * N + ns, acc.to(out_ptr.dtype.element_ty), mask=ns < N)


@triton.jit
def _grad_weight_kernel(sorted_grad_ptr, sorted_rows_ptr, indptr_ptr, x_ptr, gw_ptr, gb_ptr, B, E, N,
                        ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    # sorted_grad, sorted_rows: [E] (entries grouped by latent; batch row of each); indptr: [D+1];
    # x: [B, N]; gw: [D, N]; gb: [D]. One program: latent row i, N tile (tile 0 also writes gb[i]).
    i = tl.program_id(0).to(tl.int64)
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc, gsum = _segment_sum(sorted_grad_ptr, sorted_rows_ptr, x_ptr, tl.load(indptr_ptr + i),
                             tl.load(indptr_ptr + i + 1), E, B, ns, ns < N, N, ACC, BLOCK_E, BLOCK_N)
    tl.store(gw_ptr + i * N + ns, acc.to(gw_ptr.dtype.element_ty), mask=ns < N)
    if tl.program_id(1) == 0:
        tl.store(gb_ptr + i, tl.sum(gsum, axis=0).to(gb_ptr.dtype.element_ty))


def _block_n(N: int) -> int:
    return min(128, triton.next_power_of_2(max(N, 1)))


def grad_input(grad: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad (E,), crow (B+1,) int64, cols (E,) int64, weight (D, N), all contiguous -> grad_x (B, N)."""
    B, (D, N) = crow.shape[0] - 1, weight.shape
    out = torch.empty((B, N), dtype=weight.dtype, device=weight.device)
    BN = _block_n(N)
    if B > 0 and N > 0:
        _grad_input_kernel[(B, triton.cdiv(N, BN))](grad, crow, cols, weight, out, cols.shape[0], D, N,
                                                   ACC=_acc(weight.dtype), BLOCK_E=16, BLOCK_N=BN)
    return out


def grad_weight(sorted_grad: torch.Tensor, sorted_rows: torch.Tensor, indptr: torch.Tensor,
                x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sorted_grad, sorted_rows (E,): the entries grouped by latent; indptr (D+1,); x (B, N); all
    contiguous -> (grad_weight (D, N), grad_bias (D,)), zero for latents no entry selects."""
    D, (B, N) = indptr.shape[0] - 1, x.shape
    gw = torch.empty((D, N), dtype=x.dtype, device=x.device)
    gb = torch.empty((D,), dtype=x.dtype, device=x.device)
    BN = _block_n(N)
    if D > 0:
        _grad_weight_kernel[(D, max(1, triton.cdiv(N, BN)))](sorted_grad, sorted_rows, indptr, x, gw, gb, B,
                                                             sorted_grad.shape[0], N, ACC=_acc(x.dtype),
                                                             BLOCK_E=16, BLOCK_N=BN)
    return gw, gb
