"""SSIM over the valid pixels of a mask (``pyaeplus.ssim(..., mask=m)``, ``pyaeplus.ssim_map(..., mask=m)``).

The statistics are normalized convolutions: at every output position the window's weights are
restricted to valid pixels and renormalized, ``mu_x = G*(m x) / G*m``, ``E[x^2] = G*(m x^2) / G*m``,
and so on. Invalid pixels therefore never enter any window, whatever their value, and a mask of
ones gives exactly the unmasked SSIM (for every padding mode: the border that ``padding="same"``
adds counts as valid zeros, the reflected/replicated/circular border inherits the mask of the
pixel it copies). Zeroing invalid pixels first (or averaging the unmasked map over the mask)
lets the invalid values leak into the windows near the mask's edge; that is what users asked
pytorch-msssim to avoid (its issue 50).

Output positions are valid when their centre pixel is; the per-channel SSIM is the mean over the
valid positions, the per-image value the mean over channels that have any. An image or channel
with no valid position is NaN; ``reduction="mean"``/``"sum"`` skip NaN images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._amp import acc_dtype
from .reference import ssim as _ref

__all__ = ["check_mask", "masked_ssim_map", "masked_ssim"]


def check_mask(mask, X: torch.Tensor) -> torch.Tensor:
    """The mask as an (N or 1, C or 1, H, W) tensor of X's accumulation dtype (0 = invalid pixel).

    Accepted: bool or numeric (used as weights >= 0, so soft masks work), shaped (H, W), (N, H, W),
    or (N or 1, C or 1, H, W), on X's device.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (bool or 0/1 valid pixels), got {type(mask).__name__}")
    if X.dim() != 4:
        raise ValueError(f"mask needs 4-d X, Y (N, C, H, W), got X of shape {tuple(X.shape)}")
    N, C, H, W = X.shape
    m = mask
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[-2:] != (H, W) or m.shape[0] not in (1, N) or m.shape[1] not in (1, C):
        raise ValueError(f"mask must be (H, W), (N, H, W) or (N|1, C|1, H, W) with N={N}, C={C}, H={H}, W={W}; "
                         f"got shape {tuple(mask.shape)}")
    if m.device != X.device:
        raise ValueError(f"mask is on {m.device} but X is on {X.device}")
    if m.is_complex():
        raise TypeError(f"mask must be bool or real, got {m.dtype}")
    acc = acc_dtype(X.dtype)
    return m.to(acc).expand(N, C, H, W)


def _masked_maps(a, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ssim map (N, C, Ho, Wo), valid positions (N, C, Ho, Wo) bool) for validated SSIM args ``a``
    (a ``_ssim_args.SSIMArgs``: X, Y, window (K,), c1, c2, padding code) and the expanded mask."""
    X, Y, window = a.X, a.Y, a.window
    if window is None:
        raise ValueError("mask takes 4-d X, Y and one window for all channels (win must not differ per channel)")
    acc = m.dtype
    N, C, H, W = X.shape
    K = window.shape[0]
    r = K // 2
    mf = m.reshape(N * C, 1, H, W)
    xf = X.to(acc).reshape(N * C, 1, H, W) * mf
    yf = Y.to(acc).reshape(N * C, 1, H, W) * mf
    t = torch.cat([xf, yf, xf * X.to(acc).reshape(N * C, 1, H, W), yf * Y.to(acc).reshape(N * C, 1, H, W),
                   xf * Y.to(acc).reshape(N * C, 1, H, W)], dim=1)  # [NC, 5, H, W]: m x, m y, m x^2, m y^2, m x y
    if a.padding != 0:
        mode = _ref._PAD_MODES[a.padding]
        t = F.pad(t, (r, r, r, r), mode=mode)
        # zero padding adds valid zeros (the unmasked "same" SSIM); the other modes copy the mask
        mf = F.pad(mf, (r, r, r, r), mode=mode, value=1.0) if mode == "constant" else F.pad(mf, (r, r, r, r), mode=mode)
        centre = m.reshape(N * C, 1, H, W)
    else:
        centre = m.reshape(N * C, 1, H, W)[..., r:H - r, r:W - r]
    s = _ref._filter_sep(torch.cat([mf, t], dim=1), window.to(acc))  # [NC, 6, Ho, Wo]
    # the share of the window's weight on valid pixels (relative to the taps' own total, which is 1
    # only up to their float32 rounding: a mask of ones then reproduces the unmasked numbers)
    wsum = s[:, 0] / window.to(acc).sum() ** 2
    valid = (centre[:, 0] != 0) & (wsum > 0)
    inv = 1.0 / torch.where(valid, wsum, torch.ones_like(wsum))  # never 1/0, so no NaN reaches a gradient
    mx, my, exx, eyy, exy = (s[:, i] * inv for i in range(1, 6))
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    smap = (2 * mx * my + a.c1) / (mx * mx + my * my + a.c1) * (2 * sxy + a.c2) / (sxx + syy + a.c2)
    Ho, Wo = smap.shape[-2:]
    return smap.reshape(N, C, Ho, Wo), valid.reshape(N, C, Ho, Wo)


def masked_ssim_map(a, mask) -> torch.Tensor:
    """The masked SSIM map (N, C, Ho, Wo) in X's dtype, NaN at invalid output positions."""
    smap, valid = _masked_maps(a, check_mask(mask, a.X))
    return torch.where(valid, smap, torch.full_like(smap, float("nan"))).to(a.out_dtype)


def masked_ssim(a, mask, nonnegative_ssim: bool, size_average: bool, reduction) -> torch.Tensor:
    """Masked SSIM per image (N,) or reduced, in X's dtype (see the module docstring for NaN)."""
    if reduction is not None and reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
    smap, valid = _masked_maps(a, check_mask(mask, a.X))
    cnt = valid.flatten(2).sum(-1)                                    # (N, C) valid positions
    per_ch = torch.where(valid, smap, torch.zeros_like(smap)).flatten(2).sum(-1) / cnt.clamp_min(1)
    if nonnegative_ssim:
        per_ch = torch.relu(per_ch)
    has = cnt > 0
    n_ch = has.sum(1)
    per_image = torch.where(has, per_ch, torch.zeros_like(per_ch)).sum(1) / n_ch.clamp_min(1)
    per_image = torch.where(n_ch > 0, per_image, torch.full_like(per_image, float("nan")))
    red = ("mean" if size_average else "none") if reduction is None else reduction
    if red == "none":
        return per_image.to(a.out_dtype)
    ok = n_ch > 0
    total = torch.where(ok, per_image, torch.zeros_like(per_image)).sum()
    out = total / ok.sum().clamp_min(1) if red == "mean" else total
    return torch.where(ok.any(), out, torch.full_like(out, float("nan"))).to(a.out_dtype)
