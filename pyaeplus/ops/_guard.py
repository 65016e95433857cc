"""Memory-safety checks at the entry of the custom ops, for callers of ``torch.ops.pyaeplus.*``
that skip the public functions (``torch.compile`` graphs, ``opcheck``, user code).

What is checked here, on every call and without a device sync (attributes only, a few
microseconds): tensor ranks, lengths that size the buffers a kernel reads or writes, dtypes that
travel as one dtype code, and that every tensor is on one device. What is *not* checked here, being
data: index values. The CPU kernels check them while they run (an out-of-range index or a
malformed ``indptr`` raises ``ValueError``); the CUDA and Triton kernels cannot raise without a
sync, so they mask instead: an out-of-range index contributes zero and writes nothing, and a CSR row
range is clamped to ``[0, nnz]``. The public functions validate index values before launching; a
direct caller owns them on CUDA.

The checks run on every call of a training step, so the hot ones (``laplacian``, ``sparse_decode``,
``sparse_decode_grad``, top-k's ``_check_bwd``) are one boolean expression over as few attribute
reads as possible (~2.5 µs on the benchmark VM, ``benchmarks/bench_guards.py``); only when it fails
does the explaining version (``_explain_*``, the same rules spelled out) run to raise the message.
``tests/test_bad_inputs.py`` checks that the fast path is never less strict.
"""

from __future__ import annotations

import torch

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX = (torch.int64, torch.int32)
_I64, _F32 = torch.int64, torch.float32


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def same_device(op: str, **tensors) -> None:
    """All given tensors (None skipped) on one device."""
    first = dev = None
    for name, t in tensors.items():
        if t is None:
            continue
        if dev is None:
            first, dev = name, t.device
        elif t.device != dev:
            raise ValueError(f"pyaeplus::{op}: {name} is on {t.device} but {first} is on {dev}")


def floating(op: str, name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim or t.dtype not in FLOATING:
        raise ValueError(f"pyaeplus::{op}: {name} must be a {ndim}-d floating tensor, got {_dt(t.dtype)} "
                         f"{tuple(t.shape)}")


def vector(op: str, name: str, t: torch.Tensor, n: int | None, dtypes: tuple[torch.dtype, ...]) -> None:
    """``t`` is 1-d with ``n`` elements (any when None) and a dtype in ``dtypes``."""
    if t.dim() != 1 or (n is not None and t.shape[0] != n) or t.dtype not in dtypes:
        want = f"({n},)" if n is not None else "1-d"
        raise ValueError(f"pyaeplus::{op}: {name} must be {want} {'/'.join(map(_dt, dtypes))}, got "
                         f"{_dt(t.dtype)} {tuple(t.shape)}")


# ---- graph Laplacian ----------------------------------------------------------------------

def laplacian(op: str, z, indptr, indices, weights, scale, reduction: int) -> None:
    """z (N, d) floating; indptr (N+1,) int64; indices (nnz,) int64; weights (nnz,) float32; scale
    (N,) float32 or None; reduction 0/1/2; one device."""
    zs = z.shape
    if (len(zs) == 2 and z.dtype in FLOATING and indptr.dtype is _I64 and indices.dtype is _I64
            and weights.dtype is _F32 and indptr.shape == (zs[0] + 1,) and len(indices.shape) == 1
            and weights.shape == indices.shape and reduction in (0, 1, 2)
            and (scale is None or (scale.dtype is _F32 and scale.shape == (zs[0],) and scale.device == z.device))
            and z.device == indptr.device == indices.device == weights.device):
        return
    _explain_laplacian(op, z, indptr, indices, weights, scale, reduction)


def _explain_laplacian(op: str, z, indptr, indices, weights, scale, reduction: int) -> None:
    floating(op, "z", z, 2)
    n = z.shape[0]
    vector(op, "indptr", indptr, n + 1, (torch.int64,))
    vector(op, "indices", indices, None, (torch.int64,))
    vector(op, "weights", weights, indices.shape[0], (torch.float32,))
    if scale is not None:
        vector(op, "scale", scale, n, (torch.float32,))
    if reduction not in (0, 1, 2):
        raise ValueError(f"pyaeplus::{op}: reduction code must be 0 (none), 1 (sum) or 2 (mean), got {reduction}")
    same_device(op, z=z, indptr=indptr, indices=indices, weights=weights, scale=scale)


def laplacian_backward(op: str, grad_out, z, saved_grad, reduction: int) -> None:
    n, d = z.shape
    want = (n,) if reduction == 0 else ()
    if grad_out.numel() != (n if reduction == 0 else 1) or grad_out.dtype not in FLOATING:
        raise ValueError(f"pyaeplus::{op}: grad_out must be a floating tensor of shape {want}, got "
                         f"{_dt(grad_out.dtype)} {tuple(grad_out.shape)}")
    if tuple(saved_grad.shape) not in ((n, d), (0, d)):
        raise ValueError(f"pyaeplus::{op}: saved_grad must be ({n}, {d}) or (0, {d}), got {tuple(saved_grad.shape)}")
    same_device(op, grad_out=grad_out, z=z, saved_grad=saved_grad)


# ---- sparse decoder -----------------------------------------------------------------------

def _codes(op: str, indices, weight, like: torch.Tensor, like_name: str) -> None:
    """indices (B, k) int64/int32 with ``like``'s shape; weight (D, N), D >= 1, ``like``'s dtype."""
    if indices.dim() != 2 or indices.dtype not in INDEX or indices.shape != like.shape:
        raise ValueError(f"pyaeplus::{op}: indices must be int64/int32 with the shape of {like_name} {tuple(like.shape)}, "
                         f"got {_dt(indices.dtype)} {tuple(indices.shape)}")
    floating(op, "weight", weight, 2)
    if weight.shape[0] < 1:
        raise ValueError(f"pyaeplus::{op}: weight must have at least one row (D >= 1), got {tuple(weight.shape)}")


def sparse_decode(op: str, values, indices, weight, bias) -> None:
    """values (B, k) floating; indices (B, k); weight (D, N) and bias (N,) or None in values' dtype."""
    vs, ws = values.shape, weight.shape
    if (len(vs) == 2 and values.dtype in FLOATING and indices.dtype in INDEX and indices.shape == vs
            and len(ws) == 2 and ws[0] >= 1 and weight.dtype is values.dtype
            and (bias is None or (bias.dtype is values.dtype and bias.shape == (ws[1],)
                                  and bias.device == values.device))
            and values.device == indices.device == weight.device):
        return
    _explain_sparse_decode(op, values, indices, weight, bias)


def _explain_sparse_decode(op: str, values, indices, weight, bias) -> None:
    floating(op, "values", values, 2)
    _codes(op, indices, weight, values, "values")
    if weight.dtype != values.dtype:
        raise ValueError(f"pyaeplus::{op}: weight must have values' dtype {_dt(values.dtype)}, got {_dt(weight.dtype)}")
    if bias is not None:
        vector(op, "bias", bias, weight.shape[1], (values.dtype,))
    same_device(op, values=values, indices=indices, weight=weight, bias=bias)


def sparse_decode_grad(op: str, grad_out, indices, weight, values=None) -> None:
    """grad_out (B, N) and values (B, k) (when given) in weight's dtype; indices (B, k); weight (D, N)."""
    gs, ws, js = grad_out.shape, weight.shape, indices.shape
    if (len(gs) == 2 and len(ws) == 2 and len(js) == 2 and weight.dtype in FLOATING and grad_out.dtype is weight.dtype
            and gs[1] == ws[1] and ws[0] >= 1 and js[0] == gs[0] and indices.dtype in INDEX
            and (values is None or (values.shape == js and values.dtype is weight.dtype
                                    and values.device == weight.device))
            and grad_out.device == indices.device == weight.device):
        return
    _explain_sparse_decode_grad(op, grad_out, indices, weight, values)


def _explain_sparse_decode_grad(op: str, grad_out, indices, weight, values=None) -> None:
    floating(op, "grad_out", grad_out, 2)
    floating(op, "weight", weight, 2)
    if grad_out.dtype != weight.dtype or grad_out.shape[1] != weight.shape[1]:
        raise ValueError(f"pyaeplus::{op}: grad_out must be (B, {weight.shape[1]}) {_dt(weight.dtype)} like weight's "
                         f"columns and dtype, got {_dt(grad_out.dtype)} {tuple(grad_out.shape)}")
    if indices.dim() != 2 or indices.shape[0] != grad_out.shape[0]:
        raise ValueError(f"pyaeplus::{op}: indices must be (B={grad_out.shape[0]}, k), got {tuple(indices.shape)}")
    _codes(op, indices, weight, indices if values is None else values, "indices" if values is None else "values")
    if values is not None and values.dtype != weight.dtype:
        raise ValueError(f"pyaeplus::{op}: values must have weight's dtype {_dt(weight.dtype)}, got {_dt(values.dtype)}")
    same_device(op, grad_out=grad_out, indices=indices, weight=weight, values=values)


# ---- SSIM ---------------------------------------------------------------------------------

def ssim(op: str, x, y, window) -> None:
    """x, y floating (the shapes are ``ops.ssim._check``'s); window floating; one device."""
    if x.dtype not in FLOATING or window.dtype not in FLOATING:
        raise ValueError(f"pyaeplus::{op}: x and window must be floating, got {_dt(x.dtype)} and {_dt(window.dtype)}")
    same_device(op, x=x, y=y, window=window)


def ssim_backward(op: str, grads, grad_map, x, y, window, padding: int) -> None:
    """grad_ssim, grad_cs, grad_l1 (N, C); grad_map (N, C, Ho, Wo) or None; floating, x's device."""
    ssim(op, x, y, window)
    n, c, h, w = x.shape
    k = window.shape[0]
    for name, g in zip(("grad_ssim", "grad_cs", "grad_l1"), grads):
        if tuple(g.shape) != (n, c) or g.dtype not in FLOATING:
            raise ValueError(f"pyaeplus::{op}: {name} must be a floating ({n}, {c}) tensor, got {_dt(g.dtype)} "
                             f"{tuple(g.shape)}")
    if grad_map is not None:
        hw = (h - k + 1, w - k + 1) if padding == 0 else (h, w)
        if tuple(grad_map.shape) != (n, c, *hw) or grad_map.dtype not in FLOATING:
            raise ValueError(f"pyaeplus::{op}: grad_map must be a floating {(n, c, *hw)} tensor, got "
                             f"{_dt(grad_map.dtype)} {tuple(grad_map.shape)}")
    same_device(op, x=x, grad_ssim=grads[0], grad_cs=grads[1], grad_l1=grads[2], grad_map=grad_map)
