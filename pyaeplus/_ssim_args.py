"""Arguments of the SSIM family (``ssim``, ``ms_ssim``, ``ssim_map``, ``ssim_loss``,
``l1_ssim_loss`` and the ``pyaeplus.nn`` modules), checked the way pytorch-msssim accepts them.

* Mixed precision: X and Y are promoted to ``torch.result_type(X, Y)`` (a bfloat16 prediction
  against a float32 target computes in float32, as torch's own losses do); the kernels
  accumulate in float32. The result comes back in that dtype, or in float32 when autocast is on
  for the inputs' device and the dtype is a half type (autocast's float32-list losses do the
  same).
* No host sync with the default checks: nothing here reads a data tensor, the window taps are
  built once per (size, sigma, device) and cached on the device, and a ``win`` on a GPU is not
  compared across channels (the general path takes per-channel taps as they are).
* pytorch-msssim conventions: ``data_range`` and ``K`` as numbers or 0-d tensors; with
  ``padding="valid"`` a spatial side shorter than the window is not smoothed (its warning).
"""

from __future__ import annotations

import functools
import numbers
import warnings
from typing import NamedTuple, Optional

import torch

from . import _amp
from ._amp import acc_dtype
from . import _validate as _v
from . import config as _config
from .reference import ssim as _ref

PADDINGS = ("valid", "same", "reflect", "replicate", "circular")
PADDING_CODES = {"valid": 0, "same": 1, "reflect": 2, "replicate": 3, "circular": 4}
WINDOWS = ("gaussian", "uniform")
MAX_WIN_SIZE = 32767  # far beyond any image side; checked before a tap is allocated


class SSIMArgs(NamedTuple):
    X: torch.Tensor             # (N, C, H, W) or (N, C, D, H, W), one dtype, singletons dropped
    Y: torch.Tensor
    out_dtype: torch.dtype      # dtype of the result (see the module docstring)
    window: Optional[torch.Tensor]  # (K,) taps in the accumulation dtype on X's device: fused kernels
    win_nd: Optional[torch.Tensor]  # (C, 1, [1,] 1, K) taps for the general path (window is None)
    win_size: int
    c1: float
    c2: float
    padding: int                # 0 valid, 1 zeros, 2 reflect, 3 replicate, 4 circular
    skip: tuple                 # per spatial axis: smoothing skipped (valid padding, side < window)


def scalar(name: str, v, *, positive: bool = False) -> float:
    """A real number given as a Python number or a 0-d (or one-element) tensor. A CUDA tensor
    costs one host sync to read; pass a number or a CPU tensor in a training loop."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number or a 0-d real tensor, got a tensor of shape "
                            f"{tuple(v.shape)} and dtype {v.dtype}")
        if v.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor; pass a number (its value is needed to compute SSIM)")
        v = v.detach().reshape(()).item()
    return _v.number(name, v, positive=positive)


def constants(data_range, K) -> tuple[float, float, float]:
    """(data_range, K1, K2) as floats: data_range > 0, K a pair (tuple/list of numbers or 0-d
    tensors, or a tensor of 2 values) of positive numbers."""
    data_range = scalar("data_range", data_range, positive=True)
    if isinstance(K, torch.Tensor):
        if K.shape != (2,):
            raise TypeError(f"K must be a pair (K1, K2), got a tensor of shape {tuple(K.shape)}")
        K = tuple(K.detach().unbind(0))
    if not isinstance(K, (tuple, list)) or len(K) != 2:
        raise TypeError(f"K must be a pair (K1, K2), got {K!r}")
    try:
        k1, k2 = scalar("K[0]", K[0], positive=True), scalar("K[1]", K[1], positive=True)
    except ValueError as e:
        raise ValueError(f"{e} (c1 = (K1 * data_range)^2 and c2 = (K2 * data_range)^2 keep SSIM finite on flat "
                         "regions; 0 divides 0 by 0 there)") from None
    return data_range, k1, k2


def win_size_arg(win_size) -> int:
    if isinstance(win_size, bool) or not isinstance(win_size, numbers.Integral):
        raise TypeError(f"win_size must be an int, got {type(win_size).__name__} {win_size!r}")
    win_size = int(win_size)
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    if win_size > MAX_WIN_SIZE:
        raise ValueError(f"win_size must be <= {MAX_WIN_SIZE}, got {win_size}")
    return win_size


def window_options(win_size, win_sigma, window: str) -> tuple[int, float]:
    """Validated (win_size, win_sigma) for a built window (``window`` "gaussian" or "uniform")."""
    _v.choice("window", window, WINDOWS)
    win_size = win_size_arg(win_size)
    sigma = _v.number("win_sigma", win_sigma, positive=True) if window == "gaussian" else 0.0
    return win_size, sigma


def _build_taps(kind: str, size: int, sigma: float) -> torch.Tensor:
    return _ref.gaussian_window(size, sigma) if kind == "gaussian" else _ref.uniform_window(size)


@functools.lru_cache(maxsize=64)
def _cached_taps(kind: str, size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Built on the CPU exactly as pytorch-msssim builds them, copied to the device once (a copy
    # per call would synchronise the host with the GPU). Never an inference tensor: the SSIM op
    # saves its window for backward.
    with torch.inference_mode(False):
        return _build_taps(kind, size, sigma).to(device=device, dtype=dtype)


def taps(kind: str, size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size,) window taps on ``device`` in ``dtype``."""
    if _v._compiling() or device.type == "meta":
        return _build_taps(kind, size, sigma).to(device=device, dtype=dtype)
    return _cached_taps(kind, size, sigma, device, dtype)


def _user_window(win, X: torch.Tensor, check_finite) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``win`` as pytorch-msssim takes it: (K,) or (C or 1, 1, [1,] 1, K). Returns the shared
    (K,) taps, or the per-channel (C, 1, .., K) taps when rows may differ."""
    _v.tensor("win", win, dtypes=_v.FLOATING)
    C, K = X.shape[1], win.shape[-1]
    if K < 3 or K % 2 == 0:
        raise ValueError(f"win must have an odd length >= 3 in its last dimension, got shape {tuple(win.shape)}")
    if K > MAX_WIN_SIZE:
        raise ValueError(f"win must have at most {MAX_WIN_SIZE} taps, got shape {tuple(win.shape)}")
    if any(s != 1 for s in win.shape[1:-1]) or win.dim() not in (1, X.dim()) or \
            (win.dim() > 1 and win.shape[0] not in (1, C)):
        raise ValueError(f"win must be (K,) or ({C}, 1, {'1, ' * (X.dim() - 3)}K) as pytorch-msssim builds it, "
                         f"got shape {tuple(win.shape)}")
    if win.device.type != "cpu":
        _v.same_device(X=X, win=win)
    rows = win.detach().reshape(-1, K)
    # Reading the taps is free on the host; on a GPU only the explicit checks read them.
    readable = (win.device.type == "cpu" or _v.wants_data_checks(check_finite)) and not _v._compiling()
    if readable:
        _v.finite_now("win", rows)
    if rows.shape[0] == 1 or (readable and bool((rows == rows[0]).all())):
        return rows[0], None
    return None, rows.reshape((C, 1) + (1,) * (X.dim() - 3) + (K,))


def skipped_sides(X: torch.Tensor, win_size: int, padding: str) -> tuple:
    """Which spatial sides are too short for the window. ``"valid"`` skips them with
    pytorch-msssim's warning; the padded modes need the window to fit every side."""
    short = tuple(s < win_size for s in X.shape[2:])
    if any(short) and padding != "valid":
        raise ValueError(f"win_size {win_size} is larger than the smallest spatial side {min(X.shape[2:])} of X "
                         f"(shape {tuple(X.shape)}); padding={padding!r} needs a window that fits every side "
                         "(padding='valid' skips the smoothing along shorter sides, as pytorch-msssim does)")
    for i, s in enumerate(short):
        if s:
            warnings.warn(_ref.skip_message(X.shape, i, win_size), stacklevel=4)
    return short


def tensors(X, Y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X and Y checked, promoted to one dtype and with trailing singleton dimensions dropped (as
    pytorch-msssim does, so (N, C, 1, H, W) is an image batch). Returns (X, Y, out_dtype)."""
    _v.tensor("X", X, dtypes=_v.FLOATING, nonempty=False)
    _v.tensor("Y", Y, dtypes=_v.FLOATING, nonempty=False)
    if X.shape != Y.shape:
        raise ValueError(f"X and Y must have the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    _v.same_device(X=X, Y=Y)
    dtype = torch.promote_types(X.dtype, Y.dtype)  # = torch.result_type for one shape; traceable
    X, Y = X.to(dtype), Y.to(dtype)
    for d in range(X.dim() - 1, 1, -1):
        if X.shape[d] == 1:
            X, Y = X.squeeze(d), Y.squeeze(d)
    if X.dim() not in (4, 5):
        raise ValueError(f"X and Y must be 4-d (N, C, H, W) or 5-d (N, C, D, H, W) after dropping singleton "
                         f"dimensions, got shape {tuple(X.shape)}")
    if X.numel() == 0:
        raise ValueError(f"X and Y must not be empty, got shape {tuple(X.shape)}")
    return X, Y, _amp.loss_dtype(dtype, X.device)


def parse(X, Y, data_range, win_size, win_sigma, win, K, padding, window, check_finite=None) -> SSIMArgs:
    """Everything the SSIM family checks before a kernel runs, in one place (see the module
    docstring for the conventions). Errors name the argument."""
    X, Y, out_dtype = tensors(X, Y)
    data_range, k1, k2 = constants(data_range, K)
    pad = _v.choice("padding", padding, PADDINGS)
    kind = _v.choice("window", window, WINDOWS)
    if check_finite is not None:
        check_finite = _config.check_mode(check_finite)
    acc = acc_dtype(X.dtype)
    shared = win_nd = None
    if win is not None:
        shared, win_nd = _user_window(win, X, check_finite)
        win_size = int(win.shape[-1])
    else:
        win_size, sigma = window_options(win_size, win_sigma, kind)
    skip = skipped_sides(X, win_size, pad)
    _v.finite("X", X, check_finite)
    _v.finite("Y", Y, check_finite)
    fused = X.dim() == 4 and win_nd is None and not any(skip)
    if win is None and not all(skip):  # taps only when some side is smoothed (no huge allocations)
        shared = taps(kind, win_size, sigma, X.device, acc)
    if shared is not None:
        shared = shared.to(device=X.device, dtype=acc)
        if not fused:
            win_nd = shared.reshape((1, 1) + (1,) * (X.dim() - 3) + (win_size,)).expand(
                (X.shape[1], 1) + (1,) * (X.dim() - 3) + (win_size,))
    elif win_nd is None:  # every side skipped: the taps are never read
        win_nd = torch.ones((X.shape[1],) + (1,) * (X.dim() - 1), dtype=acc, device=X.device).expand(
            (X.shape[1], 1) + (1,) * (X.dim() - 3) + (win_size,))
    return SSIMArgs(X, Y, out_dtype, shared if fused else None, None if fused else win_nd, win_size,
                    (k1 * data_range) ** 2, (k2 * data_range) ** 2, PADDING_CODES[pad], skip)
