"""Drop-in functions: validation here, then the custom ops in ``pyaeplus.ops``.

Every public function checks its arguments (shape, dtype, device, range) and raises
ValueError/TypeError naming the argument before any kernel runs, without reading the data:
value checks (NaN/Inf, index ranges) that would read a data tensor and synchronise the device
run only with ``check_finite=True`` (per call or ``pyaeplus.config.check_finite``).
"""

from __future__ import annotations

from typing import List as _List, NamedTuple as _NamedTuple, Optional as _Optional, Sequence as _Sequence

import torch as _torch

from . import _ssim_args as _sa
from . import _validate as _v
from .graph.csr import Graph as _Graph
# Importing the op modules registers the pyaeplus:: custom ops.
from .ops import laplacian as _ops_lap
from .ops import sparse_decode as _ops_sparse_decode  # noqa: F401
from .ops import ssim as _ssim_ops
from .ops import topk as _topk_ops  # noqa: F401
from .ops import topk_encode as _topk_encode_ops  # noqa: F401
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


def _topk_k(k, D: int, *, relu, training, batch, sparse_format, k_eval, alpha) -> int:
    """Check the options shared by the top-k functions; the k to use (``k_eval``/``alpha`` rule
    when not training)."""
    k = _v.integer("k", k, lo=1, hi=D)
    for name, flag in (("relu", relu), ("training", training), ("batch", batch)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    _v.choice("sparse_format", sparse_format, ("coo", "csr"))
    if alpha is not None:
        alpha = _v.number("alpha", alpha, positive=True)
    if k_eval is not None:
        _v.integer("k_eval", k_eval, lo=1, hi=D)
    return k if training else _topk_eval_k(k, D, k_eval, alpha)


def topk_activation(x: _torch.Tensor, k: int, *, relu: bool = False, output: str = "dense", k_eval=None,
                    alpha=None, training: bool = True, batch: bool = False, sparse_format: str = "coo",
                    check_finite=None):
    """Top-k sparse activation over the last dimension (k-sparse autoencoders).

    Each row (the last dimension of ``x``) keeps its ``k`` largest entries. Ties are broken
    deterministically: the lowest index wins at the k-th boundary, and sparse outputs list
    values descending, equal values by ascending index. With ``relu=True`` the selection is
    made on ``x`` and ReLU is applied to the selected values (OpenAI sparse_autoencoder
    convention; the gradient is zero where the selected value is ``<= 0``). The gradient
    flows to the selected entries only; the backward writes it in one pass.

    NaN policy: by default (``pyaeplus.config.check_finite="auto"``, no data read) NaN counts as
    larger than ``+inf``, as in ``torch.topk``, so NaN entries are selected first (lowest index
    first) and reach the loss; ``-0.0`` and ``+0.0`` tie. With ``check_finite=True`` a NaN/Inf
    in ``x`` raises ValueError (one extra read and, on CUDA, a host sync). Under
    ``torch.autocast`` the selection runs in ``x``'s dtype (as ``torch.topk``).

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
        check_finite: None (``pyaeplus.config.check_finite``), True or False.

    Returns:
        ``output="dense"``: a tensor shaped like ``x``.
        ``output="sparse"``, per row: ``TopKResult(values (*, k), indices (*, k) int64)``.
        ``output="sparse"``, ``batch=True``, entries sorted by (row, column), ``nnz = k * B``:
        ``"coo"``: ``BatchTopKCOO(values (nnz,), rows (nnz,), cols (nnz,))``;
        ``"csr"``: ``BatchTopKCSR(values (nnz,), crow (B + 1,), cols (nnz,))``; indices int64.
        With ``relu=True`` the sparse outputs keep entries that ReLU set to 0.

    Raises:
        TypeError: ``x`` not a floating tensor, ``k``/``k_eval`` not an int, a flag not a bool.
        ValueError: ``x`` 0-d or empty (or not finite, when checked), ``k``/``k_eval`` outside [1, D],
            ``alpha <= 0``, an unknown ``output``/``sparse_format``, ``x`` on an unsupported device.
    """
    _v.tensor("x", x, min_ndim=1)
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x must be on a cpu or cuda device, got {x.device}")
    D = x.shape[-1]
    _v.choice("output", output, ("dense", "sparse"))
    k = _topk_k(k, D, relu=relu, training=training, batch=batch, sparse_format=sparse_format, k_eval=k_eval,
                alpha=alpha)
    _v.not_meta("x", x)
    _v.finite("x", x, check_finite)

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

# ---- fused top-k encoder (Linear + top-k) -------------------------------------------------

_AUTOCAST_ELIGIBLE = (_torch.float32, _torch.float16, _torch.bfloat16)


def _autocast_inputs(device_type: str, *tensors):
    """Under ``torch.autocast`` for ``device_type``: the tensors in the autocast dtype (float64 and
    None left alone), as autocast hands them to ``F.linear``; otherwise unchanged."""
    if not _torch.is_autocast_enabled(device_type):
        return tensors
    dt = _torch.get_autocast_dtype(device_type)
    return tuple(t.to(dt) if t is not None and t.dtype in _AUTOCAST_ELIGIBLE else t for t in tensors)


def topk_encode(x: _torch.Tensor, weight: _torch.Tensor, bias: _Optional[_torch.Tensor], k: int, *,
                relu: bool = True, batch: bool = False, sparse_format: str = "coo", k_eval=None, alpha=None,
                training: bool = True, check_finite=None):
    """Fused top-k encoder: ``topk(x @ weight.T + bias)`` with a backward that touches only the
    selected latents.

    The same result as ``topk_activation(F.linear(x, weight, bias), k, relu=relu, output="sparse")``
    (same selection order and tie-break, see :func:`topk_activation`), but the gradient is taken
    from the k selected entries of each row only: ``grad_x = G_sparse @ weight`` and the rows of
    ``grad_weight`` / ``grad_bias`` of the selected latents, B·k·N multiply-adds instead of the
    2·B·D·N of a dense ``Linear`` backward. ``grad_weight`` is deterministic on every backend (a
    reverse index by latent summed in a fixed order, no floating-point atomics); latents no row
    selects get exactly zero. The forward is the BLAS/cuBLAS matmul followed by the top-k kernel,
    on row chunks, so the (B, D) pre-activation exists one chunk at a time (BatchTopK excepted).

    Mixed precision: under ``torch.autocast`` the inputs are cast to the autocast dtype as
    ``F.linear`` does (an fp32 ``weight`` parameter with bf16/fp16 activations computes in the
    autocast dtype with fp32 accumulation; its gradient flows back to the fp32 parameter).

    Args:
        x: (*, N) floating tensor (float32, float64, float16, bfloat16); leading dimensions are
            flattened to B rows and restored in the per-row output.
        weight: (D, N) encoder matrix in ``nn.Linear(N, D)``'s layout (row i: latent i), same
            dtype and device as ``x`` (after autocast).
        bias: (D,) or None.
        k: latents kept per row in training, an int in [1, D].
        relu: apply ReLU to the kept values (the gradient is zero where a kept value is <= 0).
        batch: BatchTopK: keep the top ``k * B`` entries of the whole batch instead of k per row
            (rows get a variable number of entries).
        sparse_format: ``"coo"`` or ``"csr"``, the output form of ``batch=True``.
        k_eval, alpha, training: the inference rule of :func:`topk_activation` (``training=False``
            keeps ``k_eval`` or ``round(alpha * k)`` latents).
        check_finite: None (``pyaeplus.config.check_finite``), True or False.

    Returns:
        Per row: ``TopKResult(values (*, k), indices (*, k) int64)``, values descending.
        ``batch=True``, entries sorted by (row, column), ``nnz = k * B``, rows counted in the
        flattened batch: ``BatchTopKCOO(values (nnz,), rows (nnz,), cols (nnz,))`` or
        ``BatchTopKCSR(values (nnz,), crow (B + 1,), cols (nnz,))``. Entries that ReLU set to 0
        are kept (as in :func:`topk_activation`).

    Raises:
        TypeError: a tensor argument is not a tensor or has the wrong dtype, ``k``/``k_eval`` not
            an int, a flag not a bool.
        ValueError: shapes disagree, devices differ, an input is empty, ``k``/``k_eval`` outside
            [1, D], ``alpha <= 0``, an unknown ``sparse_format``, or NaN/Inf in an input when the
            explicit check is on (``check_finite=True`` or ``pyaeplus.config.check_finite=True``;
            the default ``"auto"`` reads no data, so a training step never synchronises here).
    """
    _v.tensor("x", x, min_ndim=1)
    weight = _v.tensor("weight", weight, ndim=2)
    if bias is not None:
        _v.tensor("bias", bias, ndim=1)
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x must be on a cpu or cuda device, got {x.device}")
    _v.same_device(x=x, weight=weight, bias=bias)
    x, weight, bias = _autocast_inputs(x.device.type, x, weight, bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    D, N = weight.shape
    if N != x.shape[-1]:
        raise ValueError(f"weight must have shape (D, {x.shape[-1]}) (nn.Linear's layout, one row per latent) "
                         f"for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    if bias is not None and bias.shape[0] != D:
        raise ValueError(f"bias must have shape ({D},) to match weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
    k = _topk_k(k, D, relu=relu, training=training, batch=batch, sparse_format=sparse_format, k_eval=k_eval,
                alpha=alpha)
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None:
            _v.not_meta(name, t)
            _v.finite(name, t, check_finite)
    x2 = x.reshape(-1, N)
    if not batch:
        vals, idx = _torch.ops.pyaeplus.topk_encode(x2, weight, bias, k, relu)
        lead = tuple(x.shape[:-1])
        return TopKResult(vals.reshape(lead + (k,)), idx.reshape(lead + (k,)))
    vals, rows, cols = _torch.ops.pyaeplus.batch_topk_encode(x2, weight, bias, k, relu)
    if sparse_format == "coo":
        return BatchTopKCOO(vals, rows, cols)
    bounds = _torch.arange(x2.shape[0] + 1, device=x.device, dtype=_torch.int64)
    return BatchTopKCSR(vals, _torch.searchsorted(rows, bounds), cols)


__all__ += ["topk_encode"]

# ---- sparse decoder ---------------------------------------------------------------------


__all__ += ["sparse_decode"]


def sparse_decode(values: _torch.Tensor, indices: _torch.Tensor, weight: _torch.Tensor,
                  bias: _torch.Tensor | None = None, *, check_finite=None) -> _torch.Tensor:
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
        weight: (D, d_out) decoder matrix on the device of ``values`` (the transpose of an
            ``nn.Linear(D, d_out)`` weight; row ``i`` is latent ``i``'s decoder direction).
        bias: optional (d_out,) bias, same device.
        check_finite: None (``pyaeplus.config.check_finite``), True or False; see below.

    Mixed dtypes are promoted (``torch.result_type``), under ``torch.autocast`` too: bfloat16
    values from an autocast ``Linear`` against a float32 weight parameter decode in float32
    (the (B, k) values are cast, the (D, d_out) weight is never copied).

    Returns:
        (..., d_out) tensor in the promoted dtype of values, weight and bias.

    Raises:
        TypeError: an argument is not a tensor or has the wrong dtype.
        ValueError: shapes disagree, devices differ, an input is empty; with ``check_finite=True``
            also an index outside ``[0, D)`` or a NaN/Inf input (one read each and, on CUDA, a
            host sync). By default (``"auto"``) nothing is read: an out-of-range index raises
            ValueError from the CPU kernel and contributes zero on CUDA (the kernels mask it),
            NaN propagates to the output.
    """
    values = _v.tensor("values", values, min_ndim=1)
    indices = _v.tensor("indices", indices, min_ndim=1, dtypes=(_torch.int64, _torch.int32))
    weight = _v.tensor("weight", weight, ndim=2)
    if bias is not None:
        bias = _v.tensor("bias", bias, ndim=1)
    if indices.shape != values.shape:
        raise ValueError(f"indices must have the shape of values {tuple(values.shape)}, got {tuple(indices.shape)}")
    D, d_out = weight.shape
    if bias is not None and bias.shape[0] != d_out:
        raise ValueError(f"bias must have shape ({d_out},) to match weight {tuple(weight.shape)}, "
                         f"got {tuple(bias.shape)}")
    _v.same_device(values=values, indices=indices, weight=weight, bias=bias)
    dtype = _torch.promote_types(values.dtype, weight.dtype)
    dtype = dtype if bias is None else _torch.promote_types(dtype, bias.dtype)
    values, weight = values.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    _v.finite("values", values, check_finite)
    _v.finite("weight", weight, check_finite)
    if bias is not None:
        _v.finite("bias", bias, check_finite)
    if _v.wants_data_checks(check_finite) and indices.device.type != "meta":
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


def _reduce(per_image: _torch.Tensor, size_average: bool, reduction) -> _torch.Tensor:
    if reduction is None:
        return per_image.mean() if size_average else per_image
    reduction = _v.choice("reduction", reduction, ("mean", "sum", "none"))
    if reduction == "mean":
        return per_image.mean()
    return per_image.sum() if reduction == "sum" else per_image


def _per_channel(a: _sa.SSIMArgs, want_l1: bool = False):
    """(ssim, cs, l1_sum or None) per (image, channel), means over the output map, for one level."""
    if a.window is None:
        s, cs, _ = _ssim_ref.ssim_general(a.X, a.Y, a.win_nd, a.c1, a.c2, a.padding, a.skip)
        l1 = (a.X.to(s.dtype) - a.Y.to(s.dtype)).abs().flatten(2).sum(-1) if want_l1 else None
        return s, cs, l1
    s_sum, cs_sum, l1_sum, _ = _torch.ops.pyaeplus.ssim_stats(a.X, a.Y, a.window, a.c1, a.c2, a.padding, False)
    H, W = a.X.shape[-2:]
    n = (H - a.win_size + 1) * (W - a.win_size + 1) if a.padding == 0 else H * W
    return s_sum / n, cs_sum / n, l1_sum


def ssim(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 255, size_average: bool = True, win_size: int = 11,
         win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None,
         K: _Sequence[float] = (0.01, 0.03), nonnegative_ssim: bool = False, *, padding: str = "valid",
         window: str = "gaussian", reduction: _Optional[str] = None, check_finite=None,
         mask: _Optional[_torch.Tensor] = None) -> _torch.Tensor:
    """Structural similarity, a drop-in for ``pytorch_msssim.ssim`` (same arguments, same numbers;
    the deliberate differences are listed in the README).

    Args:
        X, Y: images (N, C, H, W) or volumes (N, C, D, H, W), same shape and device, floating
            (float32/float16/bfloat16/float64). Mixed dtypes are promoted
            (``torch.result_type``): a bfloat16 prediction against a float32 target computes in
            float32. Trailing singleton dimensions are dropped first, as pytorch-msssim does.
        data_range: value range of the images (255 for 8-bit, 1.0 for [0, 1]); > 0, a number or
            a 0-d tensor.
        size_average: mean over the batch (scalar) if True, else one value per image (N,).
        win_size: odd window length >= 3. With ``padding="valid"`` a side shorter than the
            window is not smoothed (pytorch-msssim's behaviour and warning); the other paddings
            need the window to fit every side.
        win_sigma: Gaussian sigma (> 0).
        win: explicit taps, (K,) or pytorch-msssim's (C, 1, [1,] 1, K); overrides win_size/win_sigma.
            Taps that differ across channels take the pure-PyTorch path (correct, slower); a
            ``win`` on a GPU is not compared across channels (that would sync), so pass (K,)
            or a CPU tensor there to keep the fused kernels.
        K: constants (K1, K2), numbers or 0-d tensors, both > 0; c1 = (K1 * data_range)^2,
            c2 = (K2 * data_range)^2.
        nonnegative_ssim: clamp the per-channel SSIM at 0 (ReLU) before averaging.
        padding: "valid" (no padding; pytorch-msssim, piq, MATLAB), "same" (zero padding;
            fused-ssim), "reflect" (kornia, torchmetrics >= 1.4.2), "replicate", "circular";
            all but "valid" keep the map at the input size. 5-D inputs take every mode.
        window: "gaussian" (win_size, win_sigma) or "uniform" (box of win_size).
        reduction: "mean" (scalar), "sum" (scalar) or "none" (N,); overrides size_average.
        check_finite: None (``pyaeplus.config.check_finite``, default ``"auto"``: no data read),
            True (raise ValueError on NaN/Inf in X or Y: one extra read, a host sync on CUDA) or
            False.
        mask: optional valid pixels, bool or 0/1 (H, W), (N, H, W) or (N|1, C|1, H, W): SSIM over
            the valid pixels only, with window statistics that never read an invalid pixel (see
            ``pyaeplus.masked_ssim``; pure PyTorch, 4-d inputs). Images with no valid pixel are NaN.

    Returns:
        Scalar tensor, or (N,) with ``size_average=False`` / ``reduction="none"``: the mean over
        channels of each channel's mean SSIM, accumulated in float32, in the promoted dtype of
        X and Y; float32 for half inputs under ``torch.autocast``. NaN/Inf inputs give NaN
        unless checked. Gradients flow to both X and Y.
    """
    a = _sa.parse(X, Y, data_range, win_size, win_sigma, win, K, padding, window, check_finite)
    if mask is not None:
        return _masked_ssim.masked_ssim(a, mask, nonnegative_ssim, size_average, reduction)
    s, _, _ = _per_channel(a)
    if nonnegative_ssim:
        s = _torch.relu(s)
    return _reduce(s.mean(1), size_average, reduction).to(a.out_dtype)


def _ms_ssim_levels(a: _sa.SSIMArgs, weights) -> _List[float]:
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
    sides = list(a.X.shape[2:])
    for _ in range(levels - 1):
        if min(sides) < 2:  # avg_pool of a side of 1 (pytorch-msssim fails inside avg_pool3d)
            raise ValueError(f"X and Y of shape {tuple(a.X.shape)} cannot be halved {levels - 1} times for {levels} "
                             "levels (a side reaches 1 before the last level); use fewer weights")
        sides = [(s + 1) // 2 for s in sides]
    last = min(sides)
    if a.padding != 0 and last < a.win_size:
        raise ValueError(f"the coarsest of {levels} levels has a side of {last}, smaller than win_size "
                         f"{a.win_size}; padding='valid' skips the smoothing along such sides")
    return weights


def ms_ssim(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 255, size_average: bool = True,
            win_size: int = 11, win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None,
            weights: _Optional[_List[float]] = None, K: _Sequence[float] = (0.01, 0.03), *,
            padding: str = "valid", window: str = "gaussian", reduction: _Optional[str] = None,
            check_finite=None) -> _torch.Tensor:
    """Multi-scale SSIM, a drop-in for ``pytorch_msssim.ms_ssim`` (same arguments, same numbers).

    Each level runs the SSIM kernel, then both images are 2x2 average pooled (padding odd sizes
    as pytorch-msssim does; half inputs are pooled in float32). The result is
    prod_l relu(cs_l)^w_l over all but the last level times relu(ssim_last)^w_last, per image
    and channel, averaged over channels.

    Args:
        X, Y: images (N, C, H, W) or volumes (N, C, D, H, W), as in :func:`ssim`. With
            ``padding="valid"`` the smaller of H and W must exceed (win_size - 1) * 2^(levels - 1)
            (pytorch-msssim asks for 2^4 whatever the number of levels); a depth shorter than
            the window is not smoothed. The padded modes need every side of the coarsest level
            to fit the window.
        data_range, size_average, win_size, win_sigma, win, K, padding, window, reduction,
        check_finite: as in :func:`ssim`.
        weights: per-level exponents (list, tuple or tensor); default the 5 weights of Wang et al. 2003.

    Returns:
        Scalar, or (N,) with ``size_average=False`` / ``reduction="none"``, dtype as in :func:`ssim`.
    """
    a = _sa.parse(X, Y, data_range, win_size, win_sigma, win, K, padding, window, check_finite)
    weights = _ms_ssim_levels(a, weights)
    pool = _torch.nn.functional.avg_pool2d if a.X.dim() == 4 else _torch.nn.functional.avg_pool3d
    acc = _sa.acc_dtype(a.X.dtype)
    level, value = a, None
    for i, w in enumerate(weights):
        s, cs, _ = _per_channel(level)
        term = _torch.relu(s if i == len(weights) - 1 else cs) ** w   # (N, C)
        value = term if value is None else value * term
        if i < len(weights) - 1:
            pad = [d % 2 for d in level.X.shape[2:]]
            x = pool(level.X.to(acc), kernel_size=2, padding=pad)
            y = pool(level.Y.to(acc), kernel_size=2, padding=pad)
            skip = _sa.skipped_sides(x, a.win_size, "valid") if a.window is None else a.skip
            level = level._replace(X=x, Y=y, skip=skip)
    return _reduce(value.mean(1), size_average, reduction).to(a.out_dtype)


def ssim_map(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 255, win_size: int = 11, win_sigma: float = 1.5,
             win: _Optional[_torch.Tensor] = None, K: _Sequence[float] = (0.01, 0.03), *, padding: str = "valid",
             window: str = "gaussian", check_finite=None, mask: _Optional[_torch.Tensor] = None) -> _torch.Tensor:
    """The full SSIM map (per-pixel anomaly maps), differentiable w.r.t. X and Y.

    Args:
        X, Y: images (N, C, H, W) or volumes (N, C, D, H, W); same rules as :func:`ssim`
            (4-d with one window for all channels when ``mask`` is given).
        data_range, win_size, win_sigma, win, K, padding, window, check_finite: as in :func:`ssim`.
        mask: optional valid pixels, as in :func:`ssim`; invalid output positions are NaN.

    Returns:
        (N, C, *out) in the dtype :func:`ssim` returns: each spatial side is ``S - win_size + 1``
        for "valid" (``S`` where that side is not smoothed), ``S`` otherwise.
    """
    a = _sa.parse(X, Y, data_range, win_size, win_sigma, win, K, padding, window, check_finite)
    if mask is not None:
        return _masked_ssim.masked_ssim_map(a, mask)
    if a.window is None:
        return _ssim_ref.ssim_general(a.X, a.Y, a.win_nd, a.c1, a.c2, a.padding, a.skip, True)[2].to(a.out_dtype)
    return _torch.ops.pyaeplus.ssim_stats(a.X, a.Y, a.window, a.c1, a.c2, a.padding, True)[3].to(a.out_dtype)


def ssim_loss(X: _torch.Tensor, Y: _torch.Tensor, data_range: float = 1.0, win_size: int = 11,
              win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None, K: _Sequence[float] = (0.01, 0.03), *,
              padding: str = "valid", window: str = "gaussian", reduction: str = "mean",
              check_finite=None) -> _torch.Tensor:
    """``1 - SSIM(X, Y)`` as a training loss (defaults for images in [0, 1]).

    Args: as :func:`ssim`; ``reduction`` "mean" | "sum" | "none" (N,).

    Returns:
        Scalar, or (N,) for ``reduction="none"``, dtype as in :func:`ssim` (float32 under autocast).
    """
    a = _sa.parse(X, Y, data_range, win_size, win_sigma, win, K, padding, window, check_finite)
    s, _, _ = _per_channel(a)
    return _reduce(1 - s.mean(1), True, reduction).to(a.out_dtype)


def l1_ssim_loss(X: _torch.Tensor, Y: _torch.Tensor, alpha: float = 0.84, data_range: float = 1.0,
                 win_size: int = 11, win_sigma: float = 1.5, win: _Optional[_torch.Tensor] = None,
                 K: _Sequence[float] = (0.01, 0.03), *, padding: str = "valid", window: str = "gaussian",
                 reduction: str = "mean", check_finite=None) -> _torch.Tensor:
    """``(1 - alpha) * L1 + alpha * (1 - SSIM)`` (Zhao et al., "Loss Functions for Image
    Restoration with Neural Networks"), with L1 the mean |X - Y| over all pixels of an image,
    computed in the same kernel pass as SSIM.

    Args:
        alpha: weight of the SSIM term, in [0, 1].
        others: as :func:`ssim_loss`.

    Returns:
        Scalar, or (N,) for ``reduction="none"``, dtype as in :func:`ssim` (float32 under autocast).
    """
    alpha = _v.number("alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = _sa.parse(X, Y, data_range, win_size, win_sigma, win, K, padding, window, check_finite)
    s, _, l1 = _per_channel(a, want_l1=True)
    n_pix = a.X[0].numel()
    per_image = (1 - alpha) * l1.sum(1) / n_pix + alpha * (1 - s.mean(1))
    return _reduce(per_image, True, reduction).to(a.out_dtype)


__all__ += ["ssim", "ms_ssim", "ssim_map", "ssim_loss", "l1_ssim_loss"]


# ---- graph-Laplacian regularization ------------------------------------------------------


_LAP_REDUCTIONS = {"none": _ops_lap.RED_NONE, "sum": _ops_lap.RED_SUM, "mean": _ops_lap.RED_MEAN}


def laplacian_loss(z, graph, *, normalization=None, reduction="sum", check_finite=None):
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
        check_finite: None (``pyaeplus.config.check_finite``; by default no data is read and NaN
            in ``z`` propagates to the loss), True (ValueError on NaN/Inf in ``z``) or False.

    Returns:
        Scalar (``"sum"``/``"mean"``) or (N,) (``"none"``) tensor, float32 (float64 for float64
        ``z``): a loss accumulated in float32 whatever ``z``'s dtype (bfloat16 latents from an
        autocast encoder included); its gradient comes back in ``z``'s dtype.
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
    _v.not_meta("z", z)
    _v.finite("z", z, check_finite)
    indptr, indices, weights, scale = graph._grad_csr(normalization)
    need_grad = z.requires_grad and _torch.is_grad_enabled()
    loss, _ = _ops_lap.laplacian_loss(z, indptr, indices, weights, scale, red, float(max(graph.nnz, 1)), need_grad)
    return loss


__all__ += ["laplacian_loss"]
