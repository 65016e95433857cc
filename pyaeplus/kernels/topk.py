"""Triton kernels of the top-k sparse activation (one program per row).

Forward: values become order-preserving signed integer keys (``-0.0`` -> ``+0.0``, every NaN
-> the largest key, as torch.topk orders NaN). The k-th largest key T is found by bisection
on the key range of the row: each step counts ``key >= mid`` over the row (kept in
registers when it fits in one block, re-read in chunks otherwise) and stops early as soon
as exactly k keys are ``>= mid``. A last pass walks the row in index order and selects
``key > T`` plus the first ``k - count(key > T)`` entries equal to T (lowest index wins),
writing the indices in index order (and the dense output, zeros included, in the same
pass). The launcher orders sparse outputs by value (stable sort: ties stay in index order).

Backward: per row, zeros and the k gradients are written by the same program (zero-fill,
barrier, then the k stores), so grad_x costs one pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_SINGLE_BLOCK = 16384  # a row up to this size is held in registers during the search


@triton.jit
def _keys(x, valid, IS_F64: tl.constexpr):
    # Signed keys whose integer order is the float order; invalid lanes get the minimum key.
    if IS_F64:
        xf = tl.where(x == 0, 0.0, x.to(tl.float64))
        s = xf.to(tl.int64, bitcast=True)
        key = s ^ ((s >> 63) & 0x7FFFFFFFFFFFFFFF)
        key = tl.where(xf != xf, 0x7FFFFFFFFFFFFFFF, key)
        key = tl.where(valid, key, -0x7FFFFFFFFFFFFFFF - 1)
    else:
        xf = tl.where(x == 0, 0.0, x.to(tl.float32))
        s = xf.to(tl.int32, bitcast=True)
        key = s ^ ((s >> 31) & 0x7FFFFFFF)
        key = tl.where(xf != xf, 0x7FFFFFFF, key)
        key = tl.where(valid, key, -0x7FFFFFFF - 1)
    return key


@triton.jit
def _topk_fwd_kernel(x_ptr, sx0, y_ptr, idx_ptr, D, K, RELU: tl.constexpr, DENSE: tl.constexpr,
                     IS_F64: tl.constexpr, SINGLE: tl.constexpr, BLOCK: tl.constexpr):
    # x: [B, D] (row stride sx0, unit element stride); y: [B, D] contiguous (DENSE);
    # idx: [B, K] contiguous int64, written in ascending index order.
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * sx0
    offs = tl.arange(0, BLOCK)
    if IS_F64:
        kmin = -0x7FFFFFFFFFFFFFFF - 1
        kmax = 0x7FFFFFFFFFFFFFFF
    else:
        kmin = -0x7FFFFFFF - 1
        kmax = 0x7FFFFFFF
    if SINGLE:
        valid0 = offs < D
        keys0 = _keys(tl.load(xr + offs, mask=valid0, other=0.0), valid0, IS_F64)
        lo = tl.min(tl.where(valid0, keys0, kmax), axis=0).to(tl.int64)
        hi = tl.max(keys0, axis=0).to(tl.int64)
    else:
        lo = tl.full((), kmax, tl.int64)
        hi = tl.full((), kmin, tl.int64)
        for start in range(0, D, BLOCK):
            valid = start + offs < D
            kk = _keys(tl.load(xr + start + offs, mask=valid, other=0.0), valid, IS_F64)
            lo = tl.minimum(lo, tl.min(tl.where(valid, kk, kmax), axis=0).to(tl.int64))
            hi = tl.maximum(hi, tl.max(kk, axis=0).to(tl.int64))
    # Invariant: count(key >= lo) >= K; the answer T is in [lo, hi].
    while lo < hi:
        # ceil((lo + hi) / 2) without overflow (64-bit keys span the whole int64 range)
        mid = (lo >> 1) + (hi >> 1) + (((lo & 1) + (hi & 1) + 1) >> 1)
        if SINGLE:
            cnt = tl.sum((keys0 >= mid).to(tl.int32), axis=0)
        else:
            cnt = tl.full((), 0, tl.int32)
            for start in range(0, D, BLOCK):
                valid = start + offs < D
                kk = _keys(tl.load(xr + start + offs, mask=valid, other=0.0), valid, IS_F64)
                cnt += tl.sum(((kk >= mid) & valid).to(tl.int32), axis=0)
        ok = cnt >= K
        # exactly K keys >= mid: mid is a valid threshold, stop.
        hi = tl.where(cnt == K, mid, tl.where(ok, hi, mid - 1))
        lo = tl.where(ok, mid, lo)
    thr = lo
    if SINGLE:
        n_gt = tl.sum((keys0 > thr).to(tl.int32), axis=0)
    else:
        n_gt = tl.full((), 0, tl.int32)
        for start in range(0, D, BLOCK):
            valid = start + offs < D
            kk = _keys(tl.load(xr + start + offs, mask=valid, other=0.0), valid, IS_F64)
            n_gt += tl.sum(((kk > thr) & valid).to(tl.int32), axis=0)
    need_eq = K - n_gt
    eq_seen = tl.full((), 0, tl.int32)
    sel_seen = tl.full((), 0, tl.int32)
    for start in range(0, D, BLOCK):
        valid = start + offs < D
        xv = tl.load(xr + start + offs, mask=valid, other=0.0)
        kk = _keys(xv, valid, IS_F64)
        gt = (kk > thr) & valid
        eq = (kk == thr) & valid
        eq_rank = eq_seen + tl.cumsum(eq.to(tl.int32), axis=0) - 1
        sel = gt | (eq & (eq_rank < need_eq))
        slot = sel_seen + tl.cumsum(sel.to(tl.int32), axis=0) - 1
        tl.store(idx_ptr + row * K + slot, (start + offs).to(tl.int64), mask=sel)
        if DENSE:
            # compare in fp32/fp64 (16-bit compares are not reliable under the interpreter)
            if IS_F64:
                yv = xv.to(tl.float64)
            else:
                yv = xv.to(tl.float32)
            if RELU:  # torch.relu: negatives -> 0, NaN and -0.0 unchanged
                yv = tl.where(yv < 0, 0.0, yv)
            yv = tl.where(sel, yv, 0.0)
            tl.store(y_ptr + row * D + start + offs, yv.to(y_ptr.dtype.element_ty), mask=valid)
        eq_seen += tl.sum(eq.to(tl.int32), axis=0)
        sel_seen += tl.sum(sel.to(tl.int32), axis=0)


@triton.jit
def _topk_bwd_kernel(g_ptr, sg0, m_ptr, sm0, idx_ptr, out_ptr, D, K, GATHER: tl.constexpr,
                     HAS_MASK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    # g: [B, K] (or [B, D] read at idx when GATHER), row stride sg0; m: like g (row stride
    # sm0), gradient passes where m > 0; idx: [B, K] contiguous int64; out: [B, D] contiguous.
    row = tl.program_id(0).to(tl.int64)
    orow = out_ptr + row * D
    offs_d = tl.arange(0, BLOCK_D)
    zero = tl.zeros((BLOCK_D,), dtype=out_ptr.dtype.element_ty)
    for start in range(0, D, BLOCK_D):
        tl.store(orow + start + offs_d, zero, mask=start + offs_d < D)
    # The k stores below must land after the zeros written by other threads of the program.
    tl.debug_barrier()
    offs_k = tl.arange(0, BLOCK_K)
    for start in range(0, K, BLOCK_K):
        c = tl.load(idx_ptr + row * K + start + offs_k, mask=start + offs_k < K, other=0)
        # an index outside [0, D) is skipped (memory safety for direct callers; no sync to raise)
        kv = (start + offs_k < K) & (c >= 0) & (c < D)
        c = tl.where(kv, c, 0)
        if GATHER:
            src = c
        else:
            src = (start + offs_k).to(tl.int64)
        g = tl.load(g_ptr + row * sg0 + src, mask=kv, other=0.0)
        if HAS_MASK:
            m = tl.load(m_ptr + row * sm0 + src, mask=kv, other=0.0)
            g = tl.where(m > 0, g, 0.0)
        tl.store(orow + c, g.to(out_ptr.dtype.element_ty), mask=kv)


def _num_warps(block: int) -> int:
    return 4 if block <= 2048 else (8 if block <= 8192 else 16)


def topk_forward(x: torch.Tensor, k: int, relu: bool, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, D) with unit element stride. Returns ``(y (B, D), indices (B, k))`` when dense
    (indices in ascending index order), else ``(values (B, k), indices (B, k))`` sorted by
    value descending, ties by ascending index."""
    assert x.dim() == 2 and (x.shape[1] <= 1 or x.stride(1) == 1), "x must be (B, D) with unit element stride"
    B, D = x.shape
    assert 1 <= k <= D
    idx = torch.empty((B, k), dtype=torch.int64, device=x.device)
    y = torch.empty((B, D), dtype=x.dtype, device=x.device) if dense else idx  # idx: unused placeholder
    if B > 0:
        single = D <= _MAX_SINGLE_BLOCK
        block = triton.next_power_of_2(D) if single else 4096
        _topk_fwd_kernel[(B,)](x, x.stride(0), y, idx, D, k, RELU=relu, DENSE=dense,
                               IS_F64=x.dtype == torch.float64, SINGLE=single, BLOCK=block,
                               num_warps=_num_warps(block))
    if dense:
        return y, idx
    # Value order; a stable sort keeps equal values in ascending index order. Sorting x's
    # values (not the ReLU'd ones) keeps the order among entries that ReLU maps to 0.
    xv = x.gather(1, idx)
    xv, perm = torch.sort(xv, dim=1, descending=True, stable=True)
    return (torch.relu(xv) if relu else xv), idx.gather(1, perm)


def topk_backward(grad: torch.Tensor, gather: bool, mask: torch.Tensor | None, idx: torch.Tensor,
                  D: int) -> torch.Tensor:
    """grad_x (B, D): zeros except ``grad_x[r, idx[r, j]]`` = ``grad[r, j]`` (or
    ``grad[r, idx[r, j]]`` when ``gather``), zeroed where ``mask`` (same layout as grad) <= 0.
    grad/mask need a unit element stride; idx is (B, k) contiguous int64. Indices outside [0, D)
    are skipped (their gradient is dropped), never stored out of bounds."""
    idx = idx.contiguous()
    B, k = idx.shape
    out = torch.empty((B, D), dtype=grad.dtype, device=grad.device)
    if B == 0:
        return out
    block_d = min(triton.next_power_of_2(D), 4096)
    block_k = min(triton.next_power_of_2(max(k, 1)), 1024)
    _topk_bwd_kernel[(B,)](grad, grad.stride(0), mask if mask is not None else grad,
                           mask.stride(0) if mask is not None else 0, idx, out, D, k, GATHER=gather,
                           HAS_MASK=mask is not None, BLOCK_D=block_d, BLOCK_K=block_k,
                           num_warps=_num_warps(block_d))
    return out
