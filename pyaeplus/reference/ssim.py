"""Pure-PyTorch SSIM: the specification of ``pyaeplus::ssim_stats`` (and its backward, by
autograd through it), plus the general path used by the public API for inputs the kernels do
not take (a ``win`` that differs across channels, 5-D volumes, a side shorter than the window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._amp import acc_dtype, autocast_off

_PAD_MODES = {1: "constant", 2: "reflect", 3: "replicate", 4: "circular"}


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """1-D Gaussian taps (size,) in float32, normalized to sum 1, built exactly as
    pytorch-msssim builds them (so the numbers match bit for bit)."""
    coords = torch.arange(size, dtype=torch.float32)
    coords -= size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def uniform_window(size: int) -> torch.Tensor:
    """1-D box taps (size,) float32, each 1/size."""
    return torch.full((size,), 1.0 / size, dtype=torch.float32)


def _filter_sep(t: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    # t: [B, S, H, W] -> [B, S, H-K+1, W-K+1]: valid correlation with window along H then W.
    S, K = t.shape[1], window.shape[0]
    wv = window.view(1, 1, K, 1).expand(S, 1, K, 1)
    wh = window.view(1, 1, 1, K).expand(S, 1, 1, K)
    return F.conv2d(F.conv2d(t, wv, groups=S), wh, groups=S)


def ssim_maps(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c1: float, c2: float,
              padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ssim_map, cs_map), each (N, C, Ho, Wo) in float32 (float64 for float64 inputs)."""
    acc = acc_dtype(x.dtype)
    N, C, H, W = x.shape
    K = window.shape[0]
    xf = x.to(acc).reshape(N * C, 1, H, W)
    yf = y.to(acc).reshape(N * C, 1, H, W)
    t = torch.cat([xf, yf, xf * xf, yf * yf, xf * yf], dim=1)  # [NC, 5, H, W]
    if padding != 0:
        r = K // 2
        # Padding the products is the same as taking products of the padded images for every
        # mode (each padded pixel is a copy of one source pixel, or zero).
        t = F.pad(t, (r, r, r, r), mode=_PAD_MODES[padding])
    s = _filter_sep(t, window.to(acc))
    mx, my, exx, eyy, exy = s.unbind(1)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    Ho, Wo = mx.shape[-2:]
    return (lum * cs).reshape(N, C, Ho, Wo), cs.reshape(N, C, Ho, Wo)


def ssim_stats(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c1: float, c2: float, padding: int,
               want_map: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of ``pyaeplus::ssim_stats`` (see pyaeplus/ops/ssim.py for the contract)."""
    acc = acc_dtype(x.dtype)
    smap, cs = ssim_maps(x, y, window, c1, c2, padding)
    l1 = (x.to(acc) - y.to(acc)).abs().sum((2, 3))
    out_map = smap.clone() if want_map else smap.new_empty((0,))
    return smap.sum((2, 3)), cs.sum((2, 3)), l1, out_map


def _source_index(n: int, r: int, padding: int) -> torch.Tensor:
    # Source index of each of the n + 2r padded positions (-1: a zero pad, contributes nothing).
    p = torch.arange(-r, n + r)
    if padding == 1:
        return torch.where((p >= 0) & (p < n), p, torch.full_like(p, -1))
    if padding == 2:
        p = p.abs()
        return torch.where(p >= n, 2 * (n - 1) - p, p)
    if padding == 3:
        return p.clamp(0, n - 1)
    return p.remainder(n)


def _fold(t: torch.Tensor, H: int, W: int, r: int, padding: int) -> torch.Tensor:
    # t: [B, S, H + 2r, W + 2r] (gradient w.r.t. the padded image) -> [B, S, H, W]: every padded
    # position adds onto the source pixel it copies.
    if padding == 0:
        return t
    ri, ci = _source_index(H, r, padding).to(t.device), _source_index(W, r, padding).to(t.device)
    rk, ck = ri >= 0, ci >= 0
    out = t.new_zeros(t.shape[:2] + (H, t.shape[3]))
    out.index_add_(2, ri[rk], t[:, :, rk])
    res = t.new_zeros(t.shape[:2] + (H, W))
    res.index_add_(3, ci[ck], out[:, :, :, ck])
    return res


def ssim_stats_backward(grad_ssim, grad_cs, grad_l1, grad_map, x, y, window, c1, c2, padding):
    """Reference of ``pyaeplus::ssim_stats_backward``, written out (the op bodies run below
    autograd, so this cannot call autograd; tests check it against autograd through
    :func:`ssim_maps`). With the five filtered statistics mx, my, exx, eyy, exy at each output
    pixel, the loss gradient w.r.t. them is mapped back through the transposed separable
    window and the padding fold; then d/dx = T_mx + 2 x T_e + y T_exy, d/dy likewise."""
    acc = acc_dtype(x.dtype)
    N, C, H, W = x.shape
    K = window.shape[0]
    r = K // 2
    w = window.to(acc)
    xf = x.to(acc).reshape(N * C, 1, H, W)
    yf = y.to(acc).reshape(N * C, 1, H, W)
    t = torch.cat([xf, yf, xf * xf, yf * yf, xf * yf], dim=1)
    if padding != 0:
        t = F.pad(t, (r, r, r, r), mode=_PAD_MODES[padding])
    mx, my, exx, eyy, exy = _filter_sep(t, w).unbind(1)  # each [NC, Ho, Wo]
    A1 = 2 * mx * my + c1
    B1 = mx * mx + my * my + c1
    A2 = 2 * (exy - mx * my) + c2
    B2 = (exx - mx * mx) + (eyy - my * my) + c2
    lum, cs = A1 / B1, A2 / B2
    gs = grad_ssim.to(acc).reshape(N * C, 1, 1)
    if grad_map is not None:
        gs = gs + grad_map.to(acc).reshape(N * C, *mx.shape[1:])
    d_l = gs * cs
    d_cs = gs * lum + grad_cs.to(acc).reshape(N * C, 1, 1)
    g_e = -d_cs * cs / B2                    # d loss / d exx == d loss / d eyy
    g_exy = d_cs * 2 / B2
    g_mx = d_l * 2 / B1 * (my - lum * mx) - 2 * mx * g_e - my * g_exy
    g_my = d_l * 2 / B1 * (mx - lum * my) - 2 * my * g_e - mx * g_exy
    g = torch.stack([g_mx, g_my, g_e, g_exy], 1)  # [NC, 4, Ho, Wo]
    wv = w.view(1, 1, K, 1).expand(4, 1, K, 1)
    wh = w.view(1, 1, 1, K).expand(4, 1, 1, K)
    tp = F.conv_transpose2d(F.conv_transpose2d(g, wh, groups=4), wv, groups=4)  # [NC, 4, Hp, Wp]
    tm_x, tm_y, t_e, t_exy = _fold(tp, H, W, r, padding).unbind(1)
    sign = torch.sign(xf[:, 0] - yf[:, 0]) * grad_l1.to(acc).reshape(N * C, 1, 1)
    dx = tm_x + 2 * xf[:, 0] * t_e + yf[:, 0] * t_exy + sign
    dy = tm_y + 2 * yf[:, 0] * t_e + xf[:, 0] * t_exy - sign
    return dx.reshape(N, C, H, W).to(x.dtype), dy.reshape(N, C, H, W).to(y.dtype)


# ---- the general path: per-channel windows, 5-D inputs, skipped sides ----------------------


def skip_message(shape, axis: int, win_size: int) -> str:
    """pytorch-msssim's warning text for a side smaller than the window (``axis`` counts the
    spatial dimensions from 0, the message from the tensor's dimension 2)."""
    return (f"Skipping Gaussian Smoothing at dimension 2+{axis} for input: {torch.Size(shape)} and win size: "
            f"{win_size}")


def ssim_general(X: torch.Tensor, Y: torch.Tensor, win: torch.Tensor, c1: float, c2: float, padding: int,
                 skip: tuple[bool, ...], want_map: bool = False):
    """SSIM of 4-D (N, C, H, W) or 5-D (N, C, D, H, W) inputs with a per-channel window.

    The filter runs along every spatial axis whose entry in ``skip`` is False (pytorch-msssim
    skips the axes shorter than the window; only ``padding=0`` may skip), with ``padding`` as in
    :func:`ssim_maps` (0 valid, 1 zeros, 2 reflect, 3 replicate, 4 circular) on every filtered
    axis. The five statistics go through one grouped convolution per axis.

    Args:
        X, Y: same shape and dtype; computed in float32 (float64 for float64).
        win: (C, 1, [1,] 1, K) taps, pytorch-msssim's layout (row c filters channel c).

    Returns:
        ``(ssim, cs, map)``: per-(image, channel) means (N, C) of the SSIM and contrast-structure
        maps, and the SSIM map (N, C, *out) when ``want_map`` (else None).
    """
    with autocast_off(X.device):  # the convolutions accumulate in float32 under autocast too
        return _ssim_general(X, Y, win, c1, c2, padding, skip, want_map)


def _ssim_general(X, Y, win, c1, c2, padding, skip, want_map):
    acc = acc_dtype(X.dtype)
    N, C = X.shape[:2]
    nd, K = X.dim() - 2, win.shape[-1]
    xf, yf = X.to(acc), Y.to(acc)
    t = torch.cat([xf, yf, xf * xf, yf * yf, xf * yf], dim=1)  # [N, 5C, *S]
    w = win.to(device=X.device, dtype=acc).reshape((C, 1) + (1,) * (nd - 1) + (K,)).repeat(
        (5,) + (1,) * (nd + 1))                                 # [5C, 1, 1.., K]
    if padding != 0:
        r = K // 2
        t = F.pad(t, (r, r) * nd, mode=_PAD_MODES[padding])
    conv = F.conv2d if nd == 2 else F.conv3d
    for i in range(nd):
        if not skip[i]:
            t = conv(t, weight=w.transpose(2 + i, -1), groups=5 * C)
    mx, my, exx, eyy, exy = t.chunk(5, dim=1)                   # each [N, C, *out]
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    smap = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return smap.flatten(2).mean(-1), cs.flatten(2).mean(-1), (smap if want_map else None)
