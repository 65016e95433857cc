"""Triton kernels for ``sparse_decode``: gather-matmul forward, grad_values, and a grad_weight
that walks a reverse index (CSR of the (b, j) entries per latent row) so every weight row is
summed by one program in a fixed order: deterministic, no floating-point atomics.

Launchers take contiguous tensors (the op makes them so) and return fresh tensors. Indices
outside [0, D) are masked (they contribute 0) so that a bad index can never read out of
bounds; the public function rejects them before launching.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _forward_kernel(values_ptr, indices_ptr, weight_ptr, bias_ptr, out_ptr, K, D, N,
                    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    # values, indices: [B, K]; weight: [D, N]; bias: [N]; out: [B, N]. One program: row b, N tile.
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros((BLOCK_N,), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        idx = tl.load(indices_ptr + b * K + ks, mask=kmask, other=0).to(tl.int64)
        ok = kmask & (idx >= 0) & (idx < D)
        v = tl.load(values_ptr + b * K + ks, mask=ok, other=0.0).to(ACC)
        w = tl.load(weight_ptr + idx[:, None] * N + cols[None, :], mask=ok[:, None] & cmask[None, :],
                    other=0.0).to(ACC)                                       # [BLOCK_K, BLOCK_N]
        acc += tl.sum(v[:, None] * w, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(ACC)
    tl.store(out_ptr + b * N + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _grad_values_kernel(grad_out_ptr, indices_ptr, weight_ptr, gv_ptr, K, D, N, ACC: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # grad_out: [B, N]; indices: [B, K]; weight: [D, N]; gv: [B, K]. One program: row b, K tile.
    b = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    idx = tl.load(indices_ptr + b * K + ks, mask=kmask, other=0).to(tl.int64)
    ok = kmask & (idx >= 0) & (idx < D)
    acc = tl.zeros((BLOCK_K,), dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        g = tl.load(grad_out_ptr + b * N + cols, mask=cmask, other=0.0).to(ACC)
        w = tl.load(weight_ptr + idx[:, None] * N + cols[None, :], mask=ok[:, None] & cmask[None, :],
                    other=0.0).to(ACC)                                       # [BLOCK_K, BLOCK_N]
        acc += tl.sum(w * g[None, :], axis=1)
    tl.store(gv_ptr + b * K + ks, acc.to(gv_ptr.dtype.element_ty), mask=kmask)


@triton.jit
def _grad_weight_kernel(grad_out_ptr, sorted_values_ptr, sorted_rows_ptr, indptr_ptr, gw_ptr, N,
                        ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    # grad_out: [B, N]; sorted_values, sorted_rows: [E] (entries grouped by latent row, batch row
    # of each entry); indptr: [D+1]; gw: [D, N]. One program: latent row i, N tile; it writes the
    # tile even when the row has no entries (zeros).
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    start = tl.load(indptr_ptr + i)
    end = tl.load(indptr_ptr + i + 1)
    acc = tl.zeros((BLOCK_N,), dtype=ACC)
    for p0 in range(start, end, BLOCK_E):
        ps = p0 + tl.arange(0, BLOCK_E)
        pmask = ps < end
        v = tl.load(sorted_values_ptr + ps, mask=pmask, other=0.0).to(ACC)
        rows = tl.load(sorted_rows_ptr + ps, mask=pmask, other=0).to(tl.int64)
        g = tl.load(grad_out_ptr + rows[:, None] * N + cols[None, :], mask=pmask[:, None] & cmask[None, :],
                    other=0.0).to(ACC)                                       # [BLOCK_E, BLOCK_N]
        acc += tl.sum(v[:, None] * g, axis=0)
    tl.store(gw_ptr + i * N + cols, acc.to(gw_ptr.dtype.element_ty), mask=cmask)


def _block_n(N: int) -> int:
    return min(128, triton.next_power_of_2(N))


def _block_k(K: int) -> int:
    return min(16, triton.next_power_of_2(K))


def sparse_decode_forward(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """values, indices: (B, k) contiguous; weight: (D, N) contiguous; bias: (N,) or None -> (B, N)."""
    B, K = values.shape
    D, N = weight.shape
    out = torch.empty((B, N), dtype=values.dtype, device=values.device)
    BN = _block_n(N)
    grid = (B, triton.cdiv(N, BN))
    _forward_kernel[grid](values, indices, weight, bias if bias is not None else out, out, K, D, N,
                          HAS_BIAS=bias is not None, ACC=_acc(values.dtype), BLOCK_K=_block_k(K), BLOCK_N=BN)
    return out


def sparse_decode_grad_values(grad_out: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad_out: (B, N), indices: (B, k), weight: (D, N), all contiguous -> grad_values (B, k)."""
    B, K = indices.shape
    D, N = weight.shape
    gv = torch.empty((B, K), dtype=weight.dtype, device=weight.device)
    BK = _block_k(K)
    grid = (B, triton.cdiv(K, BK))
    _grad_values_kernel[grid](grad_out, indices, weight, gv, K, D, N, ACC=_acc(weight.dtype), BLOCK_K=BK,
                              BLOCK_N=_block_n(N))
    return gv


def sparse_decode_grad_weight(grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                              order: torch.Tensor, indptr: torch.Tensor, D: int) -> torch.Tensor:
    """grad_out: (B, N); values, indices: (B, k); order: (B*k,) flat entries sorted by latent row;
    indptr: (D+1,) -> grad_weight (D, N). All contiguous."""
    B, K = values.shape
    N = grad_out.shape[1]
    sorted_values = values.reshape(-1)[order].contiguous()       # [E]
    sorted_rows = torch.div(order, K, rounding_mode="floor")      # [E] batch row of each entry
    gw = torch.empty((D, N), dtype=values.dtype, device=values.device)
    BN = _block_n(N)
    grid = (D, triton.cdiv(N, BN))
    _grad_weight_kernel[grid](grad_out, sorted_values, sorted_rows, indptr, gw, N, ACC=_acc(values.dtype),
                              BLOCK_E=16, BLOCK_N=BN)
    return gw
