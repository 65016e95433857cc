"""``pyaeplus::ssim_stats`` and ``pyaeplus::_ssim_stats_backward``: per-(image, channel) sums of
the SSIM map, the contrast-structure map and |x - y|, from one pass of the separable window.

Forward: ``(x, y, window, c1, c2, padding, want_map) -> (ssim_sum, cs_sum, l1_sum, map)``
  x, y: (N, C, H, W) same floating dtype, any strides; window: (K,) float32 (float64 for
  float64 inputs); padding: 0 valid, 1 zeros, 2 reflect, 3 replicate, 4 circular.
  ssim_sum, cs_sum, l1_sum: (N, C) float32 (float64); map: (N, C, Ho, Wo) or (0,).
Backward (by recomputation; only x, y and the window are saved):
  ``(grad_ssim, grad_cs, grad_l1, grad_map?, x, y, window, c1, c2, padding) -> (dx, dy)``.
Both ops check shapes, dtypes and devices at entry (``_entry``: ``_check`` and ``ops/_guard.py``),
so direct ``torch.ops.pyaeplus`` calls cannot make a kernel read or write out of bounds.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from .._amp import acc_dtype
from ..reference import ssim as ref
from . import _guard
from ._dispatch import run

PADDING_CODES = {"valid": 0, "same": 1, "zeros": 1, "reflect": 2, "replicate": 3, "circular": 4}


def _triton():
    from ..kernels import ssim as m

    return m


def _out_hw(H: int, W: int, K: int, padding: int) -> tuple[int, int]:
    return (H - K + 1, W - K + 1) if padding == 0 else (H, W)


def _check(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, padding: int) -> None:
    # The public API validates with messages for users; this keeps direct torch.ops calls
    # memory-safe before any pointer crosses the compiled boundary.
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"pyaeplus::ssim_stats: x and y must be (N, C, H, W) of one shape, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"pyaeplus::ssim_stats: x and y must share a dtype, got {x.dtype} and {y.dtype}")
    if window.dim() != 1 or window.shape[0] < 3 or window.shape[0] % 2 == 0:
        raise ValueError(f"pyaeplus::ssim_stats: window must be 1-d with an odd length >= 3, got {tuple(window.shape)}")
    if padding not in (0, 1, 2, 3, 4):
        raise ValueError(f"pyaeplus::ssim_stats: padding code must be in 0..4, got {padding}")
    K = window.shape[0]
    if x.shape[2] < K or x.shape[3] < K:
        raise ValueError(f"pyaeplus::ssim_stats: H and W must be >= the window size {K}, got {tuple(x.shape)}")


def _prepare(x, y, window, padding):
    """Checks, then (N, C, H, W, K, acc dtype, the window in acc on x's device)."""
    _check(x, y, window, padding)
    N, C, H, W = x.shape
    acc = acc_dtype(x.dtype)
    return N, C, H, W, window.shape[0], acc, window.to(device=x.device, dtype=acc).contiguous()


def _compiled_forward(x, y, window, c1, c2, padding, want_map):
    N, C, H, W, K, acc, w = _prepare(x, y, window, padding)
    Ho, Wo = _out_hw(H, W, K, padding)
    smap = x.new_empty((N, C, Ho, Wo) if want_map else (0,), dtype=acc)
    # x, y: [N, C, H, W] through their own element strides (no copy); map: contiguous [N, C, Ho, Wo].
    head = (_ext.ptr(x), *x.stride(), _ext.ptr(y), *y.stride(), N, C, H, W, _ext.ptr(w), K, float(c1), float(c2),
            int(padding), _ext.ptr(smap) if want_map else 0)
    if x.device.type == "cuda":
        # One partial per CTA and sum: [3, N*C, n_tiles]; the fixed-order sum below is the
        # deterministic second stage of the reduction (no atomics in the kernel).
        part = x.new_empty((3, N * C, _ext.cuda_ext().ssim_forward_tiles(H, W, K, int(padding))), dtype=acc)
        if N * C > 0:
            _ext.call("ssim_forward", x, *head, _ext.ptr(part), _ext.dtype_code(x))
        sums = part.sum(-1).view(3, N, C)
        return sums[0].clone(), sums[1].clone(), sums[2].clone(), smap
    sums = [x.new_zeros((N, C), dtype=acc) for _ in range(3)]  # [N, C] each: ssim, cs, |x - y|
    if N * C > 0:
        _ext.call("ssim_forward", x, *head, *(_ext.ptr(t) for t in sums), _ext.dtype_code(x))
    return sums[0], sums[1], sums[2], smap


def _compiled_backward(grad_ssim, grad_cs, grad_l1, grad_map, x, y, window, c1, c2, padding):
    N, C, H, W, K, acc, w = _prepare(x, y, window, padding)
    # grad_ssim, grad_cs, grad_l1: [N, C]; grad_map: [N, C, Ho, Wo] or None; all contiguous in acc.
    gs, gc, gl, gm = (None if g is None else g.to(device=x.device, dtype=acc).contiguous()
                      for g in (grad_ssim, grad_cs, grad_l1, grad_map))
    dx = torch.empty_like(x)  # keeps channels_last; the kernel writes through dx's strides
    dy = torch.empty_like(y)
    if x.numel() > 0:
        _ext.call("ssim_backward", x, _ext.ptr(gs), _ext.ptr(gc), _ext.ptr(gl), _ext.ptr(gm),
                  _ext.ptr(x), *x.stride(), _ext.ptr(y), *y.stride(),
                  _ext.ptr(dx), *dx.stride(), _ext.ptr(dy), *dy.stride(), N, C, H, W,
                  _ext.ptr(w), K, float(c1), float(c2), int(padding), _ext.dtype_code(x))
    return dx, dy


def _entry(x, y, window, padding, grads=None, grad_map=None) -> None:
    _check(x, y, window, padding)
    if grads is None:
        _guard.ssim("ssim_stats", x, y, window)
    else:
        _guard.ssim_backward("_ssim_stats_backward", grads, grad_map, x, y, window, padding)


@torch.library.custom_op("pyaeplus::ssim_stats", mutates_args=(), device_types="cuda")
def ssim_stats(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c1: float, c2: float, padding: int,
               want_map: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _entry(x, y, window, padding)
    return run("ssim_stats", x.device,
               triton=lambda: _triton().ssim_stats_forward(x, y, window, c1, c2, padding, want_map),
               cuda=lambda: _compiled_forward(x, y, window, c1, c2, padding, want_map),
               torch_=lambda: ref.ssim_stats(x, y, window, c1, c2, padding, want_map))


@ssim_stats.register_kernel("cpu")
def _(x, y, window, c1, c2, padding, want_map):
    _entry(x, y, window, padding)
    return run("ssim_stats", x.device,
               cpu=lambda: _compiled_forward(x, y, window, c1, c2, padding, want_map),
               torch_=lambda: ref.ssim_stats(x, y, window, c1, c2, padding, want_map))


@ssim_stats.register_fake
def _(x, y, window, c1, c2, padding, want_map):
    N, C, H, W = x.shape
    Ho, Wo = _out_hw(H, W, window.shape[0], padding)
    acc = acc_dtype(x.dtype)
    sums = [x.new_empty((N, C), dtype=acc) for _ in range(3)]
    smap = x.new_empty((N, C, Ho, Wo) if want_map else (0,), dtype=acc)
    return sums[0], sums[1], sums[2], smap


@torch.library.custom_op("pyaeplus::_ssim_stats_backward", mutates_args=(), device_types="cuda")
def _ssim_stats_backward(grad_ssim: torch.Tensor, grad_cs: torch.Tensor, grad_l1: torch.Tensor,
                        grad_map: Optional[torch.Tensor], x: torch.Tensor, y: torch.Tensor, window: torch.Tensor,
                        c1: float, c2: float, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    _entry(x, y, window, padding, (grad_ssim, grad_cs, grad_l1), grad_map)
    args = (grad_ssim, grad_cs, grad_l1, grad_map, x, y, window, c1, c2, padding)
    return run("ssim_stats_backward", x.device,
               triton=lambda: _triton().ssim_stats_backward(*args),
               cuda=lambda: _compiled_backward(*args),
               torch_=lambda: ref.ssim_stats_backward(*args))


@_ssim_stats_backward.register_kernel("cpu")
def _(grad_ssim, grad_cs, grad_l1, grad_map, x, y, window, c1, c2, padding):
    _entry(x, y, window, padding, (grad_ssim, grad_cs, grad_l1), grad_map)
    args = (grad_ssim, grad_cs, grad_l1, grad_map, x, y, window, c1, c2, padding)
    return run("ssim_stats_backward", x.device, cpu=lambda: _compiled_backward(*args),
               torch_=lambda: ref.ssim_stats_backward(*args))


@_ssim_stats_backward.register_fake
def _(grad_ssim, grad_cs, grad_l1, grad_map, x, y, window, c1, c2, padding):
    return torch.empty_like(x), torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    x, y, window, c1, c2, padding, want_map = inputs
    ctx.save_for_backward(x, y, window)
    ctx.consts = (c1, c2, padding, want_map)


def _backward(ctx, g_ssim, g_cs, g_l1, g_map):
    x, y, window = ctx.saved_tensors
    c1, c2, padding, want_map = ctx.consts
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None, None, None, None, None
    acc = acc_dtype(x.dtype)
    N, C = x.shape[:2]

    def plane(g):  # unused outputs may arrive as None
        return torch.zeros((N, C), dtype=acc, device=x.device) if g is None else g.to(acc)

    gm = g_map.to(acc) if (want_map and g_map is not None) else None
    dx, dy = _ssim_stats_backward(plane(g_ssim), plane(g_cs), plane(g_l1), gm, x, y, window, c1, c2, padding)
    return (dx if ctx.needs_input_grad[0] else None, dy if ctx.needs_input_grad[1] else None,
            None, None, None, None, None)


ssim_stats.register_autograd(_backward, setup_context=_setup_context)
