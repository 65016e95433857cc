"""Triton brute-force k-NN candidates: tiled distances fused with a streaming top-k.

One program owns a tile of ``BLOCK_M`` query rows and streams the whole database past it in
tiles of ``BLOCK_N`` rows: a (BLOCK_M, BLOCK_N) distance tile is computed with ``tl.dot``
(L2 via ``|q|^2 + |b|^2 - 2 q.b``, inner product), or with a broadcast absolute difference
(L1), and merged at once into a running top-``KP`` list per query row held in registers.
Nothing of size N x N is ever written; the output is (M, KP) int64 keys.

Deterministic order: a candidate is packed into one int64 key
``(order_preserving_bits(distance) << 32) | index``, so the smallest key is the smallest
distance, ties broken by the lower database index, independent of tiling or scheduling.
The merge repeatedly moves the smallest key of the tile into the slot of the largest kept key
while it is smaller; after a few tiles almost no key qualifies and the loop exits at once.
Database indices must fit in 31 bits (< 2**31 rows per call).

Precision: fp32 inputs use ``input_precision="ieee"`` by default (exact fp32 products);
``tf32=True`` uses TF32 tensor cores (about 10 mantissa bits: fine for candidates, which
``pyaeplus.graph.knn_graph`` re-ranks with exact distances anyway). fp16/bf16 inputs use their
tensor cores with fp32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_K = 128
_SPACES = {"l2": 0, "ip": 1, "l1": 2}
# A constexpr: compiled Triton kernels may only read globals that are tl.constexpr.
_INT64_MAX = tl.constexpr(0x7FFFFFFFFFFFFFFF)


@triton.jit
def _knn_tile_kernel(
    q_ptr, db_ptr, qn_ptr, dn_ptr, out_ptr,
    M, N, D,
    stride_qm, stride_qd,  # q: [M, D]
    stride_dn, stride_dd,  # db: [N, D]
    stride_om,             # out: [M, KP] int64 keys, contiguous rows
    SPACE: tl.constexpr, KP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rm < M
    slots = tl.arange(0, KP)
    # Distinct sentinels so that exactly one slot is "the worst" in every row.
    top = tl.full((BLOCK_M, KP), _INT64_MAX, tl.int64) - slots[None, :].to(tl.int64)
    if SPACE == 0:
        qn = tl.load(qn_ptr + rm, mask=mask_m, other=0.0)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        mask_n = rn < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mask_k = rk < D
            a = tl.load(q_ptr + rm[:, None] * stride_qm + rk[None, :] * stride_qd,
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # [BM, BK]
            if SPACE == 2:
                b = tl.load(db_ptr + rn[:, None] * stride_dn + rk[None, :] * stride_dd,
                            mask=mask_n[:, None] & mask_k[None, :], other=0.0)  # [BN, BK]
                diff = a.to(tl.float32)[:, None, :] - b.to(tl.float32)[None, :, :]
                acc += tl.sum(tl.abs(diff), axis=2)
            else:
                bt = tl.load(db_ptr + rk[:, None] * stride_dd + rn[None, :] * stride_dn,
                             mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # [BK, BN]
                acc = tl.dot(a, bt, acc, input_precision=INPUT_PRECISION)
        if SPACE == 0:
            dn = tl.load(dn_ptr + rn, mask=mask_n, other=0.0)
            dist = qn[:, None] + dn[None, :] - 2.0 * acc
        elif SPACE == 1:
            dist = -acc
        else:
            dist = acc
        # float -> int32 with the same order (negative floats: flip the magnitude bits).
        bits = dist.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        key = (ordered.to(tl.int64) << 32) | rn[None, :].to(tl.int64)
        key = tl.where(mask_n[None, :], key, _INT64_MAX)
        worst = tl.max(top, axis=1)
        best = tl.min(key, axis=1)
        while tl.max((best < worst).to(tl.int32), axis=0) > 0:
            take = best < worst
            top = tl.where((top == worst[:, None]) & take[:, None], best[:, None], top)
            key = tl.where((key == best[:, None]) & take[:, None], _INT64_MAX, key)
            worst = tl.max(top, axis=1)
            best = tl.min(key, axis=1)
    tl.store(out_ptr + rm[:, None] * stride_om + slots[None, :], top, mask=mask_m[:, None])


def decode_keys(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, KP) int64 keys -> the ``k`` smallest as (distance (M, k) float32, index (M, k) int64),
    sorted by (distance, index); empty slots become (inf, -1)."""
    keys = torch.sort(keys, dim=1).values[:, :k]
    idx = keys & 0xFFFFFFFF
    hi = (keys >> 32).to(torch.int32)
    empty = hi == 0x7FFFFFFF
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    dist = bits.view(torch.float32)
    return torch.where(empty, torch.inf, dist), torch.where(empty, -1, idx)


def knn_candidates(q: torch.Tensor, db: torch.Tensor, k: int, *, space: str = "l2", tf32: bool = False,
                   block_m: int | None = None, block_n: int | None = None, block_k: int | None = None,
                   num_warps: int = 4, num_stages: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest database rows of every query row.

    Args:
        q: (M, D) queries; db: (N, D) database; same device and dtype (float32, float16 or
            bfloat16; float64 is computed in float32).
        k: 1 <= k <= min(N, 128).
        space: ``"l2"`` (returns squared L2), ``"ip"`` (returns the negated inner product) or
            ``"l1"``.
        tf32: TF32 tensor cores for float32 ``tl.dot`` (default: exact fp32 "ieee").

    Returns:
        (distances (M, k) float32, indices (M, k) int64), sorted by (distance, index).
    """
    if not isinstance(q, torch.Tensor) or not isinstance(db, torch.Tensor):
        raise TypeError("q and db must be torch.Tensors")
    if q.dim() != 2 or db.dim() != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"q and db must be (M, D) and (N, D), got {tuple(q.shape)} and {tuple(db.shape)}")
    if q.device != db.device:
        raise ValueError(f"q is on {q.device} but db is on {db.device}")
    if space not in _SPACES:
        raise ValueError(f"space must be one of {tuple(_SPACES)}, got {space!r}")
    M, D = q.shape
    N = db.shape[0]
    if not 1 <= k <= min(N, MAX_K):
        raise ValueError(f"k must be in [1, min(N, {MAX_K})] = [1, {min(N, MAX_K)}], got {k}")
    if N >= 2**31:
        raise ValueError(f"db has {N} rows; the kernel packs indices in 31 bits (split the database)")
    if q.dtype == torch.float64 or q.dtype != db.dtype:
        q, db = q.float(), db.float()
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"q must be float32/float16/bfloat16, got {q.dtype}")
    kp = max(16, triton.next_power_of_2(k))
    sp = _SPACES[space]
    qn = q.float().square().sum(1).contiguous() if sp == 0 else q.new_empty(1, dtype=torch.float32)
    dn = db.float().square().sum(1).contiguous() if sp == 0 else q.new_empty(1, dtype=torch.float32)
    if sp == 2:
        bm, bn, bk = block_m or 32, block_n or 32, block_k or 8
    else:
        bm, bn, bk = block_m or 64, block_n or 64, block_k or 32
    out = torch.empty((M, kp), dtype=torch.int64, device=q.device)
    if M == 0:
        return decode_keys(out, k)
    precision = "tf32" if tf32 else "ieee"
    kwargs = {"num_warps": num_warps}
    if num_stages is not None:
        kwargs["num_stages"] = num_stages
    grid = (triton.cdiv(M, bm),)
    _knn_tile_kernel[grid](
        q, db, qn, dn, out, M, N, D,
        q.stride(0), q.stride(1), db.stride(0), db.stride(1), out.stride(0),
        SPACE=sp, KP=kp, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INPUT_PRECISION=precision, **kwargs)
    return decode_keys(out, k)
