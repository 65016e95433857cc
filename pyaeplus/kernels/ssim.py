"""Triton kernels of ``pyaeplus::ssim_stats`` and ``pyaeplus::ssim_stats_backward``.

METHOD (prediction before measurement, H100 SXM, fp32 5x3x1080x1920, K=11 Gaussian):
  Each program owns one (n, c) plane tile. The separable window is applied as two banded
  matrix products per statistic (``tl.dot``, ``input_precision="ieee"`` so fp32 stays fp32):
  stats = Bh @ (T @ Bw) on an R x R tile of the padded image, T one of x, y, x*x, y*y, x*y.
  Padding modes are index maps on the loads (reflect / replicate / circular gather, zeros and
  valid mask), so every mode shares one kernel; the backward folds the padded gradient back
  onto source pixels with a 0/1 selection product (reflect / replicate only).
  A band product does R FMAs per element where only K are non-zero, so the kernels are
  bound by fp32 FMA throughput (~60 TFLOP/s on CUDA cores), not by memory:
  - forward  (R 32x64, 10 products of 2*32*64*64 or 2*32*32*64 flops per 22x54 outputs):
    ~1.7 kFLOP/output -> ~50 GFLOP, predicted ~1.5-2.5 ms, i.e. ~10-17 % of copy bandwidth
    for the 249 MB it must read.
  - backward (R 64x64, 18 products, +4 for the reflect/replicate fold, per 44x44 sources):
    ~5.5 kFLOP/source pixel -> ~170 GFLOP, predicted ~5-7 ms, ~3-5 % of copy bandwidth for
    the 498 MB it must move (x, y read; dx, dy written).
  The CUDA C++ kernels (csrc/cuda/ssim.cu) are the bandwidth-oriented implementation; these
  are the portable default. ``PYAEPLUS_SSIM_TRITON_PRECISION=tf32x3`` moves the products to
  tensor cores (predicted ~3-5x faster, ~1e-6 relative error on the statistics); to be measured.

Reductions are deterministic: one partial per program for ssim / cs / |x-y|, summed by a
second ``torch.sum`` over a fixed layout; no atomics anywhere.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .._amp import acc_dtype as _acc

# fp32 stays fp32 in the band products. PYAEPLUS_SSIM_TRITON_PRECISION=tf32x3 moves them to
# tensor cores (3 TF32 products, ~1e-6 relative error) for measurement; float64 always uses ieee.
_DOT_PRECISION = os.environ.get("PYAEPLUS_SSIM_TRITON_PRECISION", "ieee")

# Padding codes (pyaeplus/ops/ssim.py): 0 valid, 1 zeros, 2 reflect, 3 replicate, 4 circular.


@triton.jit
def _src_index(raw, n, P: tl.constexpr, PAD: tl.constexpr):
    """Source index and validity of raw index ``raw`` (may be outside [0, n)) along an axis
    of length ``n`` under padding PAD with half-window P."""
    if PAD == 2:  # reflect, edge not repeated (F.pad 'reflect')
        idx = tl.where(raw < 0, -raw, raw)
        idx = tl.where(idx >= n, 2 * (n - 1) - idx, idx)
        ok = (raw >= -P) & (raw < n + P) & (idx >= 0) & (idx < n)
    elif PAD == 3:  # replicate
        idx = tl.minimum(tl.maximum(raw, 0), n - 1)
        ok = (raw >= -P) & (raw < n + P)
    elif PAD == 4:  # circular; ((a % n) + n) % n is correct for both C and floor remainders
        idx = ((raw % n) + n) % n
        ok = raw == raw
    else:  # valid / zeros: outside is absent (zero)
        idx = raw
        ok = (raw >= 0) & (raw < n)
    idx = tl.where(ok, idx, 0)
    return idx, ok


@triton.jit
def _band(w_ptr, a, b, K: tl.constexpr):
    """Matrix M[a, b] = w[b - a] for 0 <= b - a < K, else 0 (a: column vector, b: row vector)."""
    d = b[None, :] - a[:, None]
    inb = (d >= 0) & (d < K)
    return tl.load(w_ptr + tl.where(inb, d, 0), mask=inb, other=0.0)


@triton.jit
def _stats(X, Y, Bh, Bw, PREC: tl.constexpr):
    # X, Y: [RH, RW] padded tile; Bh: [RH, RH] (Bh[i, r] = w[r - i]); Bw: [RW, RW] (Bw[c, j] = w[c - j]).
    mx = tl.dot(Bh, tl.dot(X, Bw, input_precision=PREC), input_precision=PREC)
    my = tl.dot(Bh, tl.dot(Y, Bw, input_precision=PREC), input_precision=PREC)
    exx = tl.dot(Bh, tl.dot(X * X, Bw, input_precision=PREC), input_precision=PREC)
    eyy = tl.dot(Bh, tl.dot(Y * Y, Bw, input_precision=PREC), input_precision=PREC)
    exy = tl.dot(Bh, tl.dot(X * Y, Bw, input_precision=PREC), input_precision=PREC)
    return mx, my, exx, eyy, exy


@triton.jit
def _ssim_fwd_kernel(
    x_ptr, sxn, sxc, sxh, sxw,  # x: [N, C, H, W] (element strides)
    y_ptr, syn, syc, syh, syw,  # y: [N, C, H, W]
    w_ptr,  # window: [K] in the accumulation dtype
    map_ptr,  # map: contiguous [N, C, Ho, Wo] (unused unless WANT_MAP)
    part_ptr,  # partials: contiguous [3, N*C, n_tiles]: ssim, cs, |x-y|
    C, H, W, Ho, Wo, n_th, n_tw, n_tiles, NC,
    c1, c2,
    K: tl.constexpr, PAD: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr,
    WANT_MAP: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
):
    P: tl.constexpr = K // 2
    OH: tl.constexpr = RH - K + 1  # outputs per tile along H
    OW: tl.constexpr = RW - K + 1
    SHIFT: tl.constexpr = 0 if PAD == 0 else P  # output o reads raw rows [o - SHIFT, o - SHIFT + K)
    # 1-D grid, plane-major: neighbouring programs share halos in L2.
    pid = tl.program_id(0).to(tl.int64)
    nc = pid // n_tiles
    tile = (pid % n_tiles).to(tl.int32)
    th = tile // n_tw
    tw = tile % n_tw
    n = nc // C
    c = nc % C
    oh0 = th * OH
    ow0 = tw * OW

    r = tl.arange(0, RH)
    q = tl.arange(0, RW)
    ih, okh = _src_index(oh0 - SHIFT + r, H, P, PAD)
    iw, okw = _src_index(ow0 - SHIFT + q, W, P, PAD)
    m2 = okh[:, None] & okw[None, :]
    xo = x_ptr + n * sxn + c * sxc + ih.to(tl.int64)[:, None] * sxh + iw.to(tl.int64)[None, :] * sxw
    yo = y_ptr + n * syn + c * syc + ih.to(tl.int64)[:, None] * syh + iw.to(tl.int64)[None, :] * syw
    if F64:
        X = tl.load(xo, mask=m2, other=0.0).to(tl.float64)
        Y = tl.load(yo, mask=m2, other=0.0).to(tl.float64)
    else:
        X = tl.load(xo, mask=m2, other=0.0).to(tl.float32)
        Y = tl.load(yo, mask=m2, other=0.0).to(tl.float32)

    Bh = _band(w_ptr, r, r, K)  # [RH, RH]: Bh[i, r] = w[r - i]
    Bw = _band(w_ptr, q, q, K).trans()  # [RW, RW]: Bw[c, j] = w[c - j]
    mx, my, exx, eyy, exy = _stats(X, Y, Bh, Bw, PREC)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ss = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs

    oh = oh0 + r
    ow = ow0 + q
    vo = ((r < OH) & (oh < Ho))[:, None] & ((q < OW) & (ow < Wo))[None, :]
    ss = tl.where(vo, ss, 0.0)
    cs = tl.where(vo, cs, 0.0)
    if WANT_MAP:
        mo = map_ptr + (nc * Ho + oh.to(tl.int64))[:, None] * Wo + ow[None, :]
        tl.store(mo, ss, mask=vo)

    # |x - y| over each source pixel exactly once: a tile owns the sources at its output
    # centres (rows r - SHIFT in [0, OH)); the last tile also owns the rest (valid mode's tail).
    relh = r - SHIFT
    relw = q - SHIFT
    rawh = oh0 + relh
    raww = ow0 + relw
    ownh = (relh >= 0) & ((relh < OH) | (th == n_th - 1)) & (rawh >= 0) & (rawh < H)
    oww = (relw >= 0) & ((relw < OW) | (tw == n_tw - 1)) & (raww >= 0) & (raww < W)
    l1 = tl.where(ownh[:, None] & oww[None, :], tl.abs(X - Y), 0.0)

    pidx = nc * n_tiles + tile
    tl.store(part_ptr + pidx, tl.sum(tl.sum(ss, axis=1), axis=0))
    tl.store(part_ptr + NC * n_tiles + pidx, tl.sum(tl.sum(cs, axis=1), axis=0))
    tl.store(part_ptr + 2 * NC * n_tiles + pidx, tl.sum(tl.sum(l1, axis=1), axis=0))


@triton.jit
def _ssim_bwd_kernel(
    x_ptr, sxn, sxc, sxh, sxw,  # x: [N, C, H, W]
    y_ptr, syn, syc, syh, syw,  # y: [N, C, H, W]
    dx_ptr, dxn, dxc, dxh, dxw,  # dx: [N, C, H, W] (strides of empty_like(x))
    dy_ptr, dyn, dyc, dyh, dyw,  # dy: [N, C, H, W]
    w_ptr,  # window: [K]
    gs_ptr, gc_ptr, gl_ptr,  # grad_ssim, grad_cs, grad_l1: contiguous [N*C]
    gm_ptr,  # grad_map: contiguous [N, C, Ho, Wo] (unused unless HAS_GMAP)
    C, H, W, Ho, Wo, n_tw, n_tiles,
    c1, c2,
    K: tl.constexpr, PAD: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr,
    HAS_GMAP: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
):
    # A program owns source pixels [s0, s0 + SH) x [t0, t0 + SW). In padded coordinates
    # u = raw + SHIFT the tile starts at u0 = s0 + SHIFT - (K - 1): rows r of the loaded tile
    # are raw source rows s0 - (K - 1) + r; output rows o = u0 + i for i in [0, RH - K + 1)
    # (statistics there are complete); the transposed window brings their derivative maps
    # back onto padded rows r, exact for r in [K - 1, RH - K + 1) and, at a reflect/replicate
    # border, also on the padded rows that fold onto the tile (the outputs they miss do not exist).
    P: tl.constexpr = K // 2
    SH: tl.constexpr = RH - 2 * (K - 1)
    SW: tl.constexpr = RW - 2 * (K - 1)
    SHIFT: tl.constexpr = 0 if PAD == 0 else P
    FOLD: tl.constexpr = (PAD == 2) | (PAD == 3)
    # 1-D grid, plane-major: neighbouring programs share halos in L2.
    pid = tl.program_id(0).to(tl.int64)
    nc = pid // n_tiles
    tile = (pid % n_tiles).to(tl.int32)
    th = tile // n_tw
    tw = tile % n_tw
    n = nc // C
    c = nc % C
    s0 = th * SH
    t0 = tw * SW

    r = tl.arange(0, RH)
    q = tl.arange(0, RW)
    rawh = s0 - (K - 1) + r
    raww = t0 - (K - 1) + q
    ih, okh = _src_index(rawh, H, P, PAD)
    iw, okw = _src_index(raww, W, P, PAD)
    m2 = okh[:, None] & okw[None, :]
    ih64 = ih.to(tl.int64)
    iw64 = iw.to(tl.int64)
    xo = x_ptr + n * sxn + c * sxc + ih64[:, None] * sxh + iw64[None, :] * sxw
    yo = y_ptr + n * syn + c * syc + ih64[:, None] * syh + iw64[None, :] * syw
    if F64:
        X = tl.load(xo, mask=m2, other=0.0).to(tl.float64)
        Y = tl.load(yo, mask=m2, other=0.0).to(tl.float64)
    else:
        X = tl.load(xo, mask=m2, other=0.0).to(tl.float32)
        Y = tl.load(yo, mask=m2, other=0.0).to(tl.float32)

    Bh = _band(w_ptr, r, r, K)  # [RH, RH]: Bh[i, r] = w[r - i]
    BwT = _band(w_ptr, q, q, K)  # [RW, RW]: BwT[j, c] = w[c - j]
    Bw = BwT.trans()
    mx, my, exx, eyy, exy = _stats(X, Y, Bh, Bw, PREC)

    # Output rows/cols of this tile and whether they exist (circular: every unrolled output
    # exists, it is output o mod H; the statistics gathered above are that output's).
    oh = s0 - (K - 1) + SHIFT + r
    ow = t0 - (K - 1) + SHIFT + q
    if PAD == 4:
        vh = r < RH - K + 1
        vw = q < RW - K + 1
        ohm = ((oh % Ho) + Ho) % Ho
        owm = ((ow % Wo) + Wo) % Wo
    else:
        vh = (r < RH - K + 1) & (oh >= 0) & (oh < Ho)
        vw = (q < RW - K + 1) & (ow >= 0) & (ow < Wo)
        ohm = tl.where(vh, oh, 0)
        owm = tl.where(vw, ow, 0)
    vo = vh[:, None] & vw[None, :]

    gs = tl.load(gs_ptr + nc)
    gc = tl.load(gc_ptr + nc)
    if HAS_GMAP:
        gmo = gm_ptr + (nc * Ho + ohm.to(tl.int64))[:, None] * Wo + owm[None, :]
        gsm = gs + tl.load(gmo, mask=vo, other=0.0)
    else:
        gsm = gs + tl.zeros_like(mx)

    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    a1 = 2 * mx * my + c1
    b1 = mx * mx + my * my + c1
    a2 = 2 * sxy + c2
    b2 = sxx + syy + c2
    lum = a1 / b1
    cs = a2 / b2
    # loss = sum_o gsm * lum * cs + gc * cs; derivatives by the 5 window statistics:
    g = gsm * lum + gc  # d loss / d cs
    hl = gsm * cs  # d loss / d lum
    d_xy = tl.where(vo, g * 2 / b2, 0.0)  # d / d E[xy]
    d_xx = tl.where(vo, -g * a2 / (b2 * b2), 0.0)  # d / d E[xx] (= d / d E[yy])
    inv_b1 = 1 / b1
    t1 = a1 * inv_b1 * inv_b1
    d_mx = tl.where(vo, hl * 2 * (my * inv_b1 - mx * t1) - 2 * mx * d_xx - my * d_xy, 0.0)
    d_my = tl.where(vo, hl * 2 * (mx * inv_b1 - my * t1) - 2 * my * d_xx - mx * d_xy, 0.0)

    # Transposed window: T[r, c] = sum_{i, j} w[r - i] w[c - j] D[i, j] = Bh^T @ D @ Bw^T.
    BhT = Bh.trans()
    t_mx = tl.dot(BhT, tl.dot(d_mx, BwT, input_precision=PREC), input_precision=PREC)
    t_my = tl.dot(BhT, tl.dot(d_my, BwT, input_precision=PREC), input_precision=PREC)
    t_xx = tl.dot(BhT, tl.dot(d_xx, BwT, input_precision=PREC), input_precision=PREC)
    t_xy = tl.dot(BhT, tl.dot(d_xy, BwT, input_precision=PREC), input_precision=PREC)
    # Gradient at padded position: d/dx_p = T_mx + 2 x_p T_xx + y_p T_xy (x_p = its source pixel).
    px = t_mx + 2 * X * t_xx + Y * t_xy
    py = t_my + 2 * Y * t_xx + X * t_xy

    if FOLD:
        # Sum every padded position onto its source pixel: dx_tile = Gh @ px @ Gw^T with 0/1
        # selection matrices Gh[a, r] = [src(raw_r) == s0 + a] (row a of the tile, a < SH).
        sh_ = s0 + r
        sw_ = t0 + q
        Gh = tl.where(okh[None, :] & (ih[None, :] == sh_[:, None]), 1.0, 0.0).to(px.dtype)  # [RH, RH]
        GwT = tl.where(okw[:, None] & (iw[:, None] == sw_[None, :]), 1.0, 0.0).to(px.dtype)  # [RW, RW]
        px = tl.dot(Gh, tl.dot(px, GwT, input_precision=PREC), input_precision=PREC)
        py = tl.dot(Gh, tl.dot(py, GwT, input_precision=PREC), input_precision=PREC)
        # Row a now holds source row s0 + a; reload x, y there for the L1 term.
        a_h = s0 + r
        a_w = t0 + q
        vs = ((r < SH) & (a_h < H))[:, None] & ((q < SW) & (a_w < W))[None, :]
        ah64 = a_h.to(tl.int64)
        aw64 = a_w.to(tl.int64)
        xs = tl.load(x_ptr + n * sxn + c * sxc + ah64[:, None] * sxh + aw64[None, :] * sxw, mask=vs, other=0.0)
        ys = tl.load(y_ptr + n * syn + c * syc + ah64[:, None] * syh + aw64[None, :] * syw, mask=vs, other=0.0)
        diff = xs.to(px.dtype) - ys.to(px.dtype)
    else:
        # No fold: source row s0 + a sits at tile row a + K - 1 (identity preimage only; for
        # circular the unrolled outputs already carry the wrap-around).
        a_h = rawh
        a_w = raww
        vs = ((r >= K - 1) & (r < K - 1 + SH) & (a_h >= 0) & (a_h < H))[:, None] & \
             ((q >= K - 1) & (q < K - 1 + SW) & (a_w >= 0) & (a_w < W))[None, :]
        ah64 = tl.where((a_h >= 0) & (a_h < H), a_h, 0).to(tl.int64)
        aw64 = tl.where((a_w >= 0) & (a_w < W), a_w, 0).to(tl.int64)
        diff = X - Y

    gl = tl.load(gl_ptr + nc)
    sg = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)).to(px.dtype) * gl
    px = px + sg
    py = py - sg
    dxo = dx_ptr + n * dxn + c * dxc + ah64[:, None] * dxh + aw64[None, :] * dxw
    dyo = dy_ptr + n * dyn + c * dyc + ah64[:, None] * dyh + aw64[None, :] * dyw
    tl.store(dxo, px.to(dx_ptr.dtype.element_ty), mask=vs)
    tl.store(dyo, py.to(dy_ptr.dtype.element_ty), mask=vs)


def _tile(K: int, lo: int, want: int, levels: int) -> int:
    # Smallest power of two >= max(lo, want) that leaves at least one output per tile.
    r = max(lo, want)
    while r - levels * (K - 1) < 1:
        r *= 2
    return triton.next_power_of_2(r)


def _fwd_tiles(K: int) -> tuple[int, int]:
    # Power-of-two tiles with most of each side useful; capped at 64 so that large windows
    # (and float64) still fit in registers / shared memory (the _tile loop grows a side only
    # when not even one output would fit).
    return _tile(K, 16, 32 if K <= 11 else 64, 1), _tile(K, 16, 64, 1)


def _bwd_tiles(K: int) -> tuple[int, int]:
    r = _tile(K, 16, 32 if K <= 5 else min(64, triton.next_power_of_2(4 * (K - 1))), 2)
    return r, r


def ssim_stats_forward(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c1: float, c2: float, padding: int,
                       want_map: bool, *, _tiles: Optional[tuple[int, int]] = None):
    """Launcher of the forward kernel: tensors in, ``(ssim_sum, cs_sum, l1_sum, map)`` out
    (see pyaeplus/ops/ssim.py). ``_tiles`` overrides the (RH, RW) tile (tests)."""
    N, C, H, W = x.shape
    K = int(window.shape[0])
    padding = int(padding)
    Ho, Wo = (H - K + 1, W - K + 1) if padding == 0 else (H, W)
    acc = _acc(x.dtype)
    w = window.to(device=x.device, dtype=acc).contiguous()
    smap = torch.empty((N, C, Ho, Wo) if want_map else (0,), dtype=acc, device=x.device)
    if x.numel() == 0 or Ho <= 0 or Wo <= 0:
        z = torch.zeros((N, C), dtype=acc, device=x.device)
        l1 = (x.to(acc) - y.to(acc)).abs().sum((2, 3)) if x.numel() else z.clone()
        return z, z.clone(), l1, smap
    RH, RW = _tiles or _fwd_tiles(K)
    n_th = triton.cdiv(Ho, RH - K + 1)
    n_tw = triton.cdiv(Wo, RW - K + 1)
    n_tiles = n_th * n_tw
    part = torch.empty((3, N * C, n_tiles), dtype=acc, device=x.device)
    grid = (n_tiles * N * C,)
    _ssim_fwd_kernel[grid](
        x, *x.stride(), y, *y.stride(), w, smap if want_map else part, part,
        C, H, W, Ho, Wo, n_th, n_tw, n_tiles, N * C, float(c1), float(c2),
        K=K, PAD=padding, RH=RH, RW=RW, WANT_MAP=bool(want_map), F64=acc == torch.float64,
        PREC="ieee" if acc == torch.float64 else _DOT_PRECISION, num_warps=4)
    # Second stage of the reduction: a fixed-order sum over the per-tile partials.
    sums = part.sum(-1).view(3, N, C)
    return sums[0].clone(), sums[1].clone(), sums[2].clone(), smap


def ssim_stats_backward(grad_ssim: torch.Tensor, grad_cs: torch.Tensor, grad_l1: torch.Tensor,
                        grad_map: Optional[torch.Tensor], x: torch.Tensor, y: torch.Tensor, window: torch.Tensor,
                        c1: float, c2: float, padding: int, *, _tiles: Optional[tuple[int, int]] = None):
    """Launcher of the backward kernel: ``(dx, dy)`` like x (see pyaeplus/ops/ssim.py)."""
    N, C, H, W = x.shape
    K = int(window.shape[0])
    padding = int(padding)
    Ho, Wo = (H - K + 1, W - K + 1) if padding == 0 else (H, W)
    acc = _acc(x.dtype)
    dx = torch.empty_like(x)  # keeps channels_last; written through its own strides
    dy = torch.empty_like(y)
    if x.numel() == 0:
        return dx, dy
    w = window.to(device=x.device, dtype=acc).contiguous()
    gs = grad_ssim.to(device=x.device, dtype=acc).contiguous()
    gc = grad_cs.to(device=x.device, dtype=acc).contiguous()
    gl = grad_l1.to(device=x.device, dtype=acc).contiguous()
    gm = None if grad_map is None else grad_map.to(device=x.device, dtype=acc).contiguous()
    RH, RW = _tiles or _bwd_tiles(K)
    n_th = triton.cdiv(H, RH - 2 * (K - 1))
    n_tw = triton.cdiv(W, RW - 2 * (K - 1))
    grid = (n_th * n_tw * N * C,)
    _ssim_bwd_kernel[grid](
        x, *x.stride(), y, *y.stride(), dx, *dx.stride(), dy, *dy.stride(), w, gs, gc, gl,
        gm if gm is not None else gs,
        C, H, W, Ho, Wo, n_tw, n_th * n_tw, float(c1), float(c2),
        K=K, PAD=padding, RH=RH, RW=RW, HAS_GMAP=gm is not None, F64=acc == torch.float64,
        PREC="ieee" if acc == torch.float64 else _DOT_PRECISION, num_warps=4 if RH * RW <= 2048 else 8)
    return dx, dy
