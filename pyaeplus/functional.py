"""Drop-in functions: validation here, then the custom ops in ``pyaeplus.ops``.

Every public function checks its arguments (shape, dtype, device, range, finite values when
``pyaeplus.config.check_finite``) and raises ValueError/TypeError naming the argument before
any kernel runs.
"""

from __future__ import annotations

import numbers as _numbers
from typing import List as _List, NamedTuple as _NamedTuple, Optional as _Optional, Sequence as _Sequence
from typing import Tuple as _Tuple

import torch as _torch

from . import _validate as _v
from .graph.csr import Graph as _Graph
# Importing the op modules registers the pyaeplus:: custom ops.
from .ops import laplacian as _ops_lap
from .ops import sparse_decode as _ops_sparse_decode  # noqa: F401
from .ops import ssim as _ssim_ops
from .ops import topk as _topk_ops  # noqa: F401
from .reference import ssim as _ssim_ref
from . import masked_ssim as _masked_ssim

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------


class TopKResult(_NamedTuple):
    """Sparse top-k output: ``values`` (*, k) and int64 ``indices`` (*, k) into the last dim."""

    values: _torch.Tensor
    indices: _torch.Tensor


class BatchTopKCOO(_NamedTuple):
    """Sparse BatchTopK output in COO form, entries sorted by (row, column)."""

    values: _torch.Tensor
    rows: _torch.Tensor
    cols: _torch.Tensor


class BatchTopKCSR(_NamedTuple):
    """Sparse BatchTopK output in CSR form: row r owns entries ``crow[r]:crow[r + 1]``."""

    values: _torch.Tensor
    crow: _torch.Tensor
    cols: _torch.Tensor


def _topk_eval_k(k: int, D: int, k_eval, alpha) -> int:
    if k_eval is not None:
        return _v.integer("k_eval", k_eval, lo=1, hi=D)
    if alpha is not None:
        return min(D, max(1, int(round(alpha * k))))
    return k


def topk_activation(x: _torch.Tensor, k: int, *, relu: bool = False, output: str = "dense", k_eval=None,
                    alpha=None, training: bool = True, batch: bool = False, sparse_format: str = "coo"):
    """Top-k sparse activation over the last dimension (k-sparse autoencoders).

    Each row (the last dimension of ``x``) keeps its ``k`` largest entries. Ties are broken
    deterministically: the lowest index wins at the k-th boundary, and sparse outputs list
    values descending, equal values by ascending index. With ``relu=True`` the selection is
    made on ``x`` and ReLU is applied to the selected values (OpenAI sparse_autoencoder
    convention; the gradient is zero where the selected value is ``<= 0``). The gradient
    flows to the selected entries only; the backward writes it in one pass.

    NaN policy: with ``pyaeplus.config.check_finite`` on (default) a NaN/Inf in ``x`` raises
    ValueError. With the check off (and under ``torch.compile``, which skips it) NaN counts as
    larger than ``+inf``, as in ``torch.topk``, so NaN entries are selected first (lowest
    index first); ``-0.0`` and ``+0.0`` tie.

    Args:
        x: (*, D) floating tensor (float32, float64, float16, bfloat16; any strides), at
            least 1-d, not empty.
        k: entries kept per row in training, an int in [1, D].
        relu: apply ReLU to the kept values.
        output: ``"dense"`` (same shape as ``x``, zeros elsewhere) or ``"sparse"``.
        k_eval: k used when ``training=False`` (Makhzani & Frey keep more units at
            inference), an int in [1, D]; takes precedence over ``alpha``.
        alpha: when ``training=False`` and no ``k_eval``: keep ``round(alpha * k)`` entries,
            clamped to [1, D]. A positive number.
        training: use ``k`` (True) or the inference rule above (False).
        batch: BatchTopK: keep the top ``k * B`` entries of the whole batch (``B`` = number of
            rows, ``x`` viewed as (B, D)) instead of k per row, ties by ascending flat index;
            rows get a variable number of entries.
        sparse_format: for ``batch=True, output="sparse"``: ``"coo"`` or ``"csr"``.

    Returns:
        ``output="dense"``: a tensor shaped like ``x``.
        ``output="sparse"``, per row: ``TopKResult(values (*, k), indices (*, k) int64)``.
        ``output="sparse"``, ``batch=True``, entries sorted by (row, column), ``nnz = k * B``:
        ``"coo"``: ``BatchTopKCOO(values (nnz,), rows (nnz,), cols (nnz,))``;
        ``"csr"``: ``BatchTopKCSR(values (nnz,), crow (B + 1,), cols (nnz,))``; indices int64.
        With ``relu=True`` the sparse outputs keep entries that ReLU set to 0.

    Raises:
        TypeError: ``x`` not a floating tensor, ``k``/``k_eval`` not an int, a flag not a bool.
        ValueError: ``x`` 0-d or empty or not finite, ``k``/``k_eval`` outside [1, D],
            ``alpha <= 0``, an unknown ``output``/``sparse_format``, ``x`` on an unsupported device.
    """
    _v.tensor("x", x, min_ndim=1)
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x must be on a cpu or cuda device, got {x.device}")
    D = x.shape[-1]
    k = _v.integer("k", k, lo=1, hi=D)
    for name, flag in (("relu", relu), ("training", training), ("batch", batch)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    _v.choice("output", output, ("dense", "sparse"))
    _v.choice("sparse_format", sparse_format, ("coo", "csr"))
    if alpha is not None:
        alpha = _v.number("alpha", alpha, positive=True)
    if k_eval is not None:
        _v.integer("k_eval", k_eval, lo=1, hi=D)
    _v.finite("x", x)
    if not training:
        k = _topk_eval_k(k, D, k_eval, alpha)

    x2 = x.reshape(-1, D)
    B = x2.shape[0]
    if not batch:
        if output == "dense":
            y, _ = _torch.ops.pyaeplus.topk_dense(x2, k, relu)
            return y.reshape(x.shape)
        vals, idx = _torch.ops.pyaeplus.topk_sparse(x2, k, relu)
        lead = tuple(x.shape[:-1])
        return TopKResult(vals.reshape(lead + (k,)), idx.reshape(lead + (k,)))

    # BatchTopK: the same kernels on the batch seen as one row of B * D entries (a global
    # threshold; ties by flat index, which is row-major order).
    flat = x2.reshape(1, B * D)
    if output == "dense":
        y, _ = _torch.ops.pyaeplus.topk_dense(flat, k * B, relu)
        return y.reshape(x.shape)
    vals, fidx = _torch.ops.pyaeplus.topk_sparse(flat, k * B, relu)
    # Row-major order of the kept entries, as consumers of COO/CSR expect.
    fidx, order = _torch.sort(fidx[0])
    vals = vals[0].gather(0, order)
    cols = fidx % D
    if sparse_format == "coo":
        return BatchTopKCOO(vals, _torch.div(fidx, D, rounding_mode="floor"), cols)
    crow = _torch.searchsorted(fidx, _torch.arange(B + 1, device=x.device, dtype=_torch.int64) * D)
    return BatchTopKCSR(vals, crow, cols)


__all__ += ["topk_activation", "TopKResult", "BatchTopKCOO", "BatchTopKCSR"]

# ---- sparse decoder ---------------------------------------------------------------------


__all__ += ["sparse_decode"]


def sparse_decode(values: _torch.Tensor, indices: _torch.Tensor, weight: _torch.Tensor,
                  bias: _torch.Tensor | None = None) -> _torch.Tensor:
    """Decode sparse codes: ``out[..., :] = sum_j values[..., j] * weight[indices[..., j], :] + bias``.

    The fused gather-matmul of a top-k sparse autoencoder's decoder: the codes stay sparse
    (never a dense (B, D) tensor). Duplicate indices within a row add up. Accumulation is in
    float32 (float64 for float64 inputs). The gradient for ``weight`` is deterministic on every
    backend (a reverse index summed in a fixed order, no floating-point atomics); gradients flow
    to ``values``, ``weight`` and ``bias``.

    Args:
        values: (..., k) float32/float16/bfloat16/float64 code values, e.g. the ``values`` of
            ``pyaeplus.topk_activation(x, k, output="sparse")``. Leading dimensions are flattened
            and restored.
        indices: (..., k) int64 or int32 latent indices in ``[0, D)``, same shape as ``values``.
        weight: (D, d_out) decoder matrix, same dtype and device as ``values`` (the transpose of
            an ``nn.Linear(D, d_out)`` weight; row ``i`` is latent ``i``'s decoder direction).
        bias: optional (d_out,) bias, same dtype and device.

    Returns:
        (..., d_out) tensor in ``values``' dtype.

    Raises:
        TypeError: an argument is not a tensor or has the wrong dtype.
        ValueError: shapes disagree, devices differ, an index is outside ``[0, D)``, an input is
            empty, or (with ``pyaeplus.config.check_finite``) contains NaN/Inf. The index-range
            and finite checks are skipped while ``torch.compile`` traces; the kernels then
            bounds-check (CPU: raise) or mask (GPU: an out-of-range index contributes zero).
    """
    values = _v.tensor("values", values, min_ndim=1)
    indices = _v.tensor("indices", indices, min_ndim=1, dtypes=(_torch.int64, _torch.int32))
    weight = _v.tensor("weight", weight, ndim=2)
    if bias is not None:
        bias = _v.tensor("bias", bias, ndim=1)
    if weight.dtype != values.dtype:
        raise TypeError(f"weight must have the dtype of values ({values.dtype}), got {weight.dtype}")
    if bias is not None and bias.dtype != values.dtype:
        raise TypeError(f"bias must have the dtype of values ({values.dtype}), got {bias.dtype}")
    if indices.shape != values.shape:
        raise ValueError(f"indices must have the shape of values {tuple(values.shape)}, got {tuple(indices.shape)}")
    D, d_out = weight.shape
    if bias is not None and bias.shape[0] != d_out:
        raise ValueError(f"bias must have shape ({d_out},) to match weight {tuple(weight.shape)}, "
                         f"got {tuple(bias.shape)}")
    _v.same_device(values=values, indices=indices, weight=weight, bias=bias)
    _v.finite("values", values)
    _v.finite("weight", weight)
    if bias is not None:
        _v.finite("bias", bias)
    if not _v._compiling():
        lo, hi = _torch.aminmax(indices)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= D:
            raise ValueError(f"indices must lie in [0, {D}) (weight has {D} rows), got values in [{lo}, {hi}]")
    k = values.shape[-1]
    lead = values.shape[:-1]
    out = _torch.ops.pyaeplus.sparse_decode(values.reshape(-1, k), indices.reshape(-1, k), weight, bias)
    return out.reshape(*lead, d_out)


# ---- SSIM / MS-SSIM ---------------------------------------------------------------------


_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003


class _SSIMArgs(_NamedTuple):
    X: _torch.Tensor
    Y: _torch.Tensor
    window: _Optional[_torch.Tensor]  # (K,) shared 1-D taps, or None: the general path
    win_nd: _Optional[_torch.Tensor]  # (C, 1, [1,] 1, K) per-channel taps for the general path
    win_size: int
    c1: float
    c2: float
    padding: int


def _ssim_args(X, Y, data_range, win_size, win_sigma, win, K, padding, window) -> _SSIMArgs:
    _v.tensor("X", X, dtypes=_v.FLOATING, nonempty=False)
    _v.tensor("Y", Y, dtypes=_v.FLOATING, nonempty=False)
    if X.dtype != Y.dtype:
        raise TypeError(f"X and Y must have the same dtype, got {X.dtype} and {Y.dtype}")
    if X.shape != Y.shape:
        raise ValueError(f"X and Y must have the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    _v.same_device(X=X, Y=Y)
    # pytorch-msssim drops trailing singleton dimensions beyond the first two (so (N, C, 1, H, W)
    # is an image batch); do the same so that the same calls are accepted.
    for d in range(X.dim() - 1, 1, -1):
        if X.shape[d] == 1:
            X, Y = X.squeeze(d), Y.squeeze(d)
    if X.dim() not in (4, 5):
        raise ValueError(f"X and Y must be 4-d (N, C, H, W) or 5-d (N, C, D, H, W) after dropping singleton "
                         f"dimensions, got shape {tuple(X.shape)}")
    if X.numel() == 0:
        raise ValueError(f"X and Y must not be empty, got shape {tuple(X.shape)}")
    data_range = _v.number("data_range", data_range, positive=True)
    if not isinstance(K, (tuple, list)) or len(K) != 2:
        raise TypeError(f"K must be a pair (K1, K2), got {K!r}")
    k1 = _v.number("K[0]", K[0], nonnegative=True)
    k2 = _v.number("K[1]", K[1], nonnegative=True)
    pad = _v.choice("padding", padding, ("valid", "same", "reflect", "replicate", "circular"))
    kind = _v.choice("window", window, ("gaussian", "uniform"))
    C = X.shape[1]
    win_nd = None
    if win is not None:
        _v.tensor("win", win, dtypes=_v.FLOATING)
        win_size = int(win.shape[-1])
        if win_size < 3 or win_size % 2 == 0:
            raise ValueError(f"win must have an odd length >= 3 in its last dimension, got shape {tuple(win.shape)}")
        if any(s != 1 for s in win.shape[1:-1]) or win.dim() not in (1, X.dim()) or \
                (win.dim() > 1 and win.shape[0] not in (1, C)):
            raise ValueError(f"win must be (K,) or ({C}, 1, {'1, ' * (X.dim() - 3)}K) as pytorch-msssim builds it, "
                             f"got shape {tuple(win.shape)}")
        _v.same_device(X=X, win=win) if win.device.type != "cpu" else None
        rows = win.reshape(-1, win_size)
        taps = rows[0]
        if rows.shape[0] > 1 and not _v._compiling() and not bool((rows == taps).all()):
            win_nd = win.reshape((C, 1) + (1,) * (X.dim() - 3) + (win_size,)) if rows.shape[0] == C else None
    else:
        if isinstance(win_size, bool) or not isinstance(win_size, _numbers.Integral):
            raise TypeError(f"win_size must be an int, got {type(win_size).__name__} {win_size!r}")
        win_size = int(win_size)
        if win_size < 3 or win_size % 2 == 0:
            raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
        if kind == "gaussian":
            win_sigma = _v.number("win_sigma", win_sigma, positive=True)
            taps = _ssim_ref.gaussian_window(win_size, win_sigma)
        else:
            taps = _ssim_ref.uniform_window(win_size)
    small = min(X.shape[2:])
    if small < win_size:
        raise ValueError(f"win_size {win_size} is larger than the smallest spatial size {small} of X "
                         f"(shape {tuple(X.shape)}); use a smaller window")
    _v.finite("X", X)
    _v.finite("Y", Y)
    acc = _torch.float64 if X.dtype == _torch.float64 else _torch.float32
    general = X.dim() == 5 or win_nd is not None
    if general and pad != "valid":
        raise ValueError(f"padding={pad!r} is supported for 4-d inputs with one window for all channels; "
                         "5-d inputs and per-channel windows use padding='valid'")
    if general and win_nd is None:
        win_nd = taps.reshape((1, 1) + (1,) * (X.dim() - 3) + (win_size,)).expand(
            (C, 1) + (1,) * (X.dim() - 3) + (win_size,))
    window_t = None if general else taps.to(device=X.device, dtype=acc).contiguous()
    return _SSIMArgs(X, Y, window_t, win_nd, win_size, (k1 * data_range) ** 2, (k2 * data_range) ** 2,
                     _ssim_ops.PADDING_CODES[pad])


def _reduce(per_image: _torch.Tensor, size_average: bool, reduction) -> _torch.Tensor:
    if reduction is None:
        return per_image.mean() if size_average else per_image
    reduction = _v.choice("reduction", reduction, ("mean", "sum", "none"))
    if reduction == "mean":
        return per_image.mean()
    return per_image.sum() if reduction == "sum" else per_image


def _per_channel(a: _SSIMArgs, data_range: float, K) -> _Tuple[_torch.Tensor, _torch.Tensor, _torch.Tensor]:
    """(ssim, cs, l1_sum) per (image, channel), means over the output map, for one level."""
    if a.window is None:
        s, cs = _ssim_ref.ssim_per_channel(a.X, a.Y, a.win_nd, data_range, K)
        l1 = (a.X.to(s.dtype) - a.Y.to(s.dtype)).abs().flatten(2).sum(-1)
        return s, cs, l1
    s_sum, cs_sum, l1_sum, _ = _torch.ops.pyaeplus.ssim_stats(a.X, a.Y, a.window, a.c1, a.c2, a.padding, False)
    H, W = a.X.shape[-2:]
    n = (H - a.win_size + 1) * (W - a.win_size + 1) if a.padding == 0 else H * W
    return s_sum / n, cs_sum / n, l1_sum


def ssim(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 255, size_average: bool = True, win_size: int = 11,
         win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None,
         K: _Sequence[float] = (0.01, 0.03), nonnegative_ssim: bool = False, *, padding: str = "valid",
         window: str = "gaussian", reduction: _Optional[str] = None,
         mask: _Optional[_torch.Tensor] = None) -> _torch.Tensor:
    """Structural similarity, a drop-in for ``pytorch_msssim.ssim`` (same arguments, same numbers).

    Args:
        X, Y: images (N, C, H, W) (or (N, C, D, H, W), computed by the pure-PyTorch path), same
            shape, dtype (float32/float16/bfloat16/float64) and device. Trailing singleton
            dimensions are dropped first, as pytorch-msssim does.
        data_range: value range of the images (255 for 8-bit, 1.0 for [0, 1]); > 0.
        size_average: mean over the batch (scalar) if True, else one value per image (N,).
        win_size: odd window length >= 3, at most min(H, W).
        win_sigma: Gaussian sigma (> 0).
        win: explicit taps, (K,) or pytorch-msssim's (C, 1, 1, K); overrides win_size/win_sigma.
            Taps that differ across channels take the pure-PyTorch path (correct, slower).
        K: constants (K1, K2); c1 = (K1 * data_range)^2, c2 = (K2 * data_range)^2.
        nonnegative_ssim: clamp the per-channel SSIM at 0 (ReLU) before averaging.
        padding: "valid" (no padding; pytorch-msssim, piq, MATLAB), "same" (zero padding;
            fused-ssim), "reflect" (kornia, torchmetrics >= 1.4.2), "replicate", "circular";
            all but "valid" keep the map at H x W.
        window: "gaussian" (win_size, win_sigma) or "uniform" (box of win_size).
        reduction: "mean" (scalar), "sum" (scalar) or "none" (N,); overrides size_average.
        mask: optional valid pixels, bool or 0/1 (H, W), (N, H, W) or (N|1, C|1, H, W): SSIM over
            the valid pixels only, with window statistics that never read an invalid pixel (see
            ``pyaeplus.masked_ssim``; pure PyTorch, 4-d inputs). Images with no valid pixel are NaN.

    Returns:
        Scalar tensor, or (N,) with ``size_average=False`` / ``reduction="none"``: the mean over
        channels of each channel's mean SSIM, in the dtype of X (accumulated in float32).

    Non-finite inputs raise ValueError (``pyaeplus.config.check_finite``). Gradients flow to
    both X and Y.
    """
    a = _ssim_args(X, Y, data_range, win_size, win_sigma, win, K, padding, window)
    if mask is not None:
        return _masked_ssim.masked_ssim(a, mask, nonnegative_ssim, size_average, reduction)
    s, _, _ = _per_channel(a, float(data_range), K)
    if nonnegative_ssim:
        s = _torch.relu(s)
    return _reduce(s.mean(1), size_average, reduction).to(a.X.dtype)


def ms_ssim(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 255, size_average: bool = True,
            win_size: int = 11, win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None,
            weights: _Optional[_List[float]] = None, K: _Sequence[float] = (0.01, 0.03), *,
            padding: str = "valid", window: str = "gaussian", reduction: _Optional[str] = None) -> _torch.Tensor:
    """Multi-scale SSIM, a drop-in for ``pytorch_msssim.ms_ssim`` (same arguments, same numbers).

    Each level runs the SSIM kernel, then both images are 2x2 average pooled (padding odd sizes
    as pytorch-msssim does). The result is prod_l relu(cs_l)^w_l over all but the last level
    times relu(ssim_last)^w_last, per image and channel, averaged over channels.

    Args:
        X, Y: images (N, C, H, W) (or 5-d), as in :func:`ssim`. With ``padding="valid"`` the
            smaller side must exceed (win_size - 1) * 2^(levels - 1), as pytorch-msssim asserts.
        data_range, size_average, win_size, win_sigma, win, K, padding, window, reduction:
            as in :func:`ssim`.
        weights: per-level exponents; default the 5 weights of Wang et al. 2003.

    Returns:
        Scalar, or (N,) with ``size_average=False`` / ``reduction="none"``, in the dtype of X.
    """
    a = _ssim_args(X, Y, data_range, win_size, win_sigma, win, K, padding, window)
    if weights is None:
        weights = _MS_SSIM_WEIGHTS
    if isinstance(weights, _torch.Tensor):
        weights = weights.tolist()
    if not isinstance(weights, (list, tuple)) or len(weights) < 1:
        raise TypeError(f"weights must be a non-empty list of level weights, got {weights!r}")
    weights = [_v.number(f"weights[{i}]", w) for i, w in enumerate(weights)]
    levels = len(weights)
    smaller = min(a.X.shape[-2:])
    if a.padding == 0 and smaller <= (a.win_size - 1) * 2 ** (levels - 1):
        raise ValueError(f"X and Y must have a smaller side > {(a.win_size - 1) * 2 ** (levels - 1)} for "
                         f"{levels} levels and win_size {a.win_size} (got {tuple(a.X.shape)})")
    last = smaller
    for _ in range(levels - 1):
        last = (last + 1) // 2
    if last < a.win_size:
        raise ValueError(f"the coarsest of {levels} levels is {last} pixels, smaller than win_size {a.win_size}")
    pool = _torch.nn.functional.avg_pool2d if a.X.dim() == 4 else _torch.nn.functional.avg_pool3d
    x, y = a.X, a.Y
    mcs = []
    for i in range(levels):
        s, cs, _ = _per_channel(a._replace(X=x, Y=y), float(data_range), K)
        if i < levels - 1:
            mcs.append(_torch.relu(cs))
            pad = [d % 2 for d in x.shape[2:]]
            x = pool(x, kernel_size=2, padding=pad)
            y = pool(y, kernel_size=2, padding=pad)
    stack = _torch.stack(mcs + [_torch.relu(s)], dim=0)  # (levels, N, C)
    w = _torch.tensor(weights, dtype=stack.dtype, device=stack.device).view(-1, 1, 1)
    per_image = _torch.prod(stack**w, dim=0).mean(1)
    return _reduce(per_image, size_average, reduction).to(a.X.dtype)


def ssim_map(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 255, win_size: int = 11, win_sigma: float = 1.5,
             win: _Optional[_torch.Tensor] = None, K: _Sequence[float] = (0.01, 0.03), *, padding: str = "valid",
             window: str = "gaussian", mask: _Optional[_torch.Tensor] = None) -> _torch.Tensor:
    """The full SSIM map (per-pixel anomaly maps), differentiable w.r.t. X and Y.

    Args:
        X, Y: images (N, C, H, W); same rules as :func:`ssim` (4-d with one window only).
        data_range, win_size, win_sigma, win, K, padding, window: as in :func:`ssim`.
        mask: optional valid pixels, as in :func:`ssim`; invalid output positions are NaN.

    Returns:
        (N, C, Ho, Wo) in the dtype of X: Ho = H - win_size + 1 for "valid", H otherwise (same for W).
    """
    a = _ssim_args(X, Y, data_range, win_size, win_sigma, win, K, padding, window)
    if mask is not None:
        return _masked_ssim.masked_ssim_map(a, mask)
    if a.window is None:
        raise ValueError("ssim_map takes 4-d X, Y and one window for all channels (win must not differ per channel)")
    return _torch.ops.pyaeplus.ssim_stats(a.X, a.Y, a.window, a.c1, a.c2, a.padding, True)[3].to(a.X.dtype)


def ssim_loss(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 1.0, win_size: int = 11,
              win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None, K: _Sequence[float] = (0.01, 0.03), *,
              padding: str = "valid", window: str = "gaussian", reduction: str = "mean") -> _torch.Tensor:
    """``1 - SSIM(X, Y)`` as a training loss (defaults for images in [0, 1]).

    Args: as :func:`ssim`; ``reduction`` "mean" | "sum" | "none" (N,).

    Returns:
        Scalar, or (N,) for ``reduction="none"``, in the dtype of X.
    """
    a = _ssim_args(X, Y, data_range, win_size, win_sigma, win, K, padding, window)
    s, _, _ = _per_channel(a, float(data_range), K)
    return _reduce(1 - s.mean(1), True, reduction).to(a.X.dtype)


def l1_ssim_loss(X: _torch.Tensor, Y: _torch.Tensor, alpha: float = 0.84, data_range: float = 1.0,
                 win_size: int = 11, win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None,
                 K: _Sequence[float] = (0.01, 0.03), *, padding: str = "valid", window: str = "gaussian",
                 reduction: str = "mean") -> _torch.Tensor:
    """``(1 - alpha) * L1 + alpha * (1 - SSIM)`` (Zhao et al., "Loss Functions for Image
    Restoration with Neural Networks"), with L1 the mean |X - Y| over all pixels of an image,
    computed in the same kernel pass as SSIM.

    Args:
        alpha: weight of the SSIM term, in [0, 1].
        others: as :func:`ssim_loss`.

    Returns:
        Scalar, or (N,) for ``reduction="none"``, in the dtype of X.
    """
    alpha = _v.number("alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = _ssim_args(X, Y, data_range, win_size, win_sigma, win, K, padding, window)
    s, _, l1 = _per_channel(a, float(data_range), K)
    n_pix = a.X[0].numel()
    per_image = (1 - alpha) * l1.sum(1) / n_pix + alpha * (1 - s.mean(1))
    return _reduce(per_image, True, reduction).to(a.X.dtype)


__all__ += ["ssim", "ms_ssim", "ssim_map", "ssim_loss", "l1_ssim_loss"]


# ---- graph-Laplacian regularization ------------------------------------------------------


_LAP_REDUCTIONS = {"none": _ops_lap.RED_NONE, "sum": _ops_lap.RED_SUM, "mean": _ops_lap.RED_MEAN}


def laplacian_loss(z, graph, *, normalization=None, reduction="sum"):
    """Graph-Laplacian regularizer over a weighted graph, loss and gradient in one fused pass.

    ``L = sum_i sum_{j in row i} W_ij ||z_i - z_j||^2`` over the CSR as given. A symmetric graph
    stores each undirected edge twice, so there ``L = 2 tr(Zᵀ (D - W) Z)``.

    * ``normalization="rw"``: ``W_ij / d_i`` with ``d_i = sum_j W_ij`` (row sums);
    * ``normalization="sym"``: ``sum_ij W_ij ||z_i/sqrt(d_i) - z_j/sqrt(d_j)||^2``.

    Nodes of zero degree are scaled by 0 (no division by zero). The forward computes the
    per-node losses and, when ``z`` requires grad, the gradient in the same row-parallel pass
    over ``W + Wᵀ`` (built once per graph and normalization, cached on ``graph``); the backward
    only scales that gradient by ``grad_output``. No float atomics: results are deterministic.

    Args:
        z: (N, d) float32 / float16 / bfloat16 / float64 latents; accumulation is float32
            (float64 for float64).
        graph: :class:`pyaeplus.graph.Graph` with ``num_nodes == N`` on ``z``'s device
            (``graph.to(z.device)``). Under ``torch.compile`` call ``graph.prepare(normalization)``
            once before compiling (it builds the cached operands with data-dependent shapes).
        normalization: ``None``, ``"sym"`` or ``"rw"``.
        reduction: ``"sum"`` (default), ``"mean"`` (sum divided by the number of stored edges
            ``graph.nnz``) or ``"none"``: (N,) per-node losses where each edge term is split
            equally between its endpoints (for a symmetric graph: node i's row sum), summing to
            the ``"sum"`` loss.

    Returns:
        Scalar (``"sum"``/``"mean"``) or (N,) (``"none"``) tensor, float32 (float64 for float64 ``z``).
    """
    _v.tensor("z", z, ndim=2)
    if not isinstance(graph, _Graph):
        raise TypeError(f"graph must be a pyaeplus.graph.Graph, got {type(graph).__name__}")
    _v.choice("normalization", normalization, (None, "sym", "rw"))
    red = _LAP_REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if red is None:
        raise ValueError(f"reduction must be one of ('none', 'sum', 'mean'), got {reduction!r}")
    if graph.num_nodes != z.shape[0]:
        raise ValueError(f"graph has {graph.num_nodes} nodes but z has {z.shape[0]} rows; they must match")
    if graph.device != z.device:
        raise ValueError(f"graph is on {graph.device} but z is on {z.device}; move it with graph.to(z.device)")
    _v.finite("z", z)
    indptr, indices, weights, scale = graph._grad_csr(normalization)
    need_grad = z.requires_grad and _torch.is_grad_enabled()
    loss, _ = _ops_lap.laplacian_loss(z, indptr, indices, weights, scale, red, float(max(graph.nnz, 1)), need_grad)
    return loss


__all__ += ["laplacian_loss"]
