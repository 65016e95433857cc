"""Custom ops of the graph-Laplacian regularizer.

``pyaeplus::laplacian_loss`` computes the loss AND (when ``need_grad``) its gradient in one fused,
row-parallel, atomics-free pass over the symmetric operand CSR S (``Graph._grad_csr``); the
gradient is returned as a second (non-differentiable) output and saved, so that
``pyaeplus::_laplacian_loss_backward`` only scales it by ``grad_output``. With
``reduction="none"`` (per-node losses, arbitrary ``grad_output``) the backward recomputes in
one more pass with per-row weights. Per-row losses are reduced with ``torch.sum``
(deterministic, no float atomics).

Arguments shared by both ops: ``z`` (N, d) latents; ``indptr`` (N+1,) int64, ``indices`` (nnz,)
int64, ``weights`` (nnz,) float32: the CSR of S; ``scale`` (N,) float32 or None: the per-node
factor s (``"sym"``); ``reduction``: 0 none, 1 sum, 2 mean; ``divisor``: what "mean" divides by.

Both ops check shapes, dtypes and devices at entry (``ops/_guard.py``). Index values: the CPU
kernel raises ``ValueError`` on a malformed ``indptr`` or an index outside [0, N); the CUDA and
Triton kernels clamp each row's edge range to [0, nnz] and skip out-of-range indices (no sync), so a
bad CSR gives a wrong loss, never an out-of-bounds access. ``pyaeplus.graph.Graph`` validates.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _ext
from .._amp import acc_dtype as _acc
from ..reference import laplacian as ref
from . import _guard
from ._dispatch import run

RED_NONE, RED_SUM, RED_MEAN = 0, 1, 2


def _triton():
    from ..kernels import laplacian as m

    return m


def _alloc(z: Tensor, need_rows: bool, need_grad: bool) -> tuple[Tensor, Tensor]:
    n, d = z.shape
    rows = torch.empty(n if need_rows else 0, dtype=_acc(z.dtype), device=z.device)
    grad = torch.empty((n, d) if need_grad else (0, d), dtype=z.dtype, device=z.device)
    return rows, grad


def _compiled_impl(z, indptr, indices, weights, scale, row_weight, grad_scale, need_rows, need_grad):
    z = z.contiguous()  # unit inner stride; the kernel takes the row stride
    rows, grad = _alloc(z, need_rows, need_grad)
    # z: [N, d] (row stride); indptr [N+1], indices/weights [nnz], scale/row_weight [N]: contiguous.
    # The CPU kernel checks indptr (0, non-decreasing, nnz) and every index (raises ValueError); the
    # CUDA kernel clamps each row's edge range to [0, nnz] and skips indices outside [0, N) (no sync).
    _ext.call("laplacian_rows_grad", z,
              _ext.ptr(z), z.shape[0], z.shape[1], z.stride(0), _ext.ptr(indptr), _ext.ptr(indices), indices.shape[0],
              _ext.ptr(weights), _ext.ptr(scale), _ext.ptr(row_weight), float(grad_scale),
              _ext.ptr(rows) if need_rows else 0, _ext.ptr(grad) if need_grad else 0, _ext.dtype_code(z))
    return rows, grad


def _rows_grad(device, z, indptr, indices, weights, scale, row_weight, grad_scale, need_rows, need_grad):
    # The kernels index the 1-d operands by position: unit stride (a no-op for the usual tensors).
    indptr, indices, weights = indptr.contiguous(), indices.contiguous(), weights.contiguous()
    scale = None if scale is None else scale.contiguous()
    args = (z, indptr, indices, weights, scale, row_weight, grad_scale, need_rows, need_grad)
    return run("laplacian_loss", device,
               triton=lambda: _triton().laplacian_rows_grad(*args),
               cuda=lambda: _compiled_impl(*args),
               cpu=lambda: _compiled_impl(*args),
               torch_=lambda: ref.laplacian_rows_grad(*args))


def _reduce(rows: Tensor, reduction: int, divisor: float) -> Tensor:
    if reduction == RED_NONE:
        return rows
    total = rows.sum()
    return total / divisor if reduction == RED_MEAN else total


# ---- forward: loss (+ saved gradient) ---------------------------------------------------

def _forward(z, indptr, indices, weights, scale, reduction, divisor, need_grad):
    _guard.laplacian("laplacian_loss", z, indptr, indices, weights, scale, reduction)
    fused = need_grad and reduction != RED_NONE
    grad_scale = 1.0 / divisor if reduction == RED_MEAN else 1.0
    rows, grad = _rows_grad(z.device, z, indptr, indices, weights, scale, None, grad_scale, True, fused)
    return _reduce(rows, reduction, divisor), grad


@torch.library.custom_op("pyaeplus::laplacian_loss", mutates_args=(), device_types="cuda")
def laplacian_loss(z: Tensor, indptr: Tensor, indices: Tensor, weights: Tensor, scale: Optional[Tensor],
                   reduction: int, divisor: float, need_grad: bool) -> tuple[Tensor, Tensor]:
    return _forward(z, indptr, indices, weights, scale, reduction, divisor, need_grad)


@laplacian_loss.register_kernel("cpu")
def _(z, indptr, indices, weights, scale, reduction, divisor, need_grad):
    return _forward(z, indptr, indices, weights, scale, reduction, divisor, need_grad)


@laplacian_loss.register_fake
def _(z, indptr, indices, weights, scale, reduction, divisor, need_grad):
    n, d = z.shape
    acc = _acc(z.dtype)
    loss = z.new_empty((n,) if reduction == RED_NONE else (), dtype=acc)
    fused = need_grad and reduction != RED_NONE
    return loss, z.new_empty((n, d) if fused else (0, d))


# ---- backward -----------------------------------------------------------------------------

def _backward_impl(grad_out, z, indptr, indices, weights, scale, saved_grad, reduction, divisor):
    _guard.laplacian("_laplacian_loss_backward", z, indptr, indices, weights, scale, reduction)
    _guard.laplacian_backward("_laplacian_loss_backward", grad_out, z, saved_grad, reduction)
    acc = _acc(z.dtype)
    if reduction != RED_NONE and saved_grad.numel() == z.numel() and z.numel() > 0:
        # The fused forward already holds d(loss)/dz: only the scaling by grad_output is left.
        if saved_grad.dtype == acc:
            return saved_grad * grad_out.to(acc)
        return (saved_grad.to(acc) * grad_out.to(acc)).to(z.dtype)
    if reduction == RED_NONE:
        g, grad_scale = grad_out.to(acc).contiguous(), 1.0
    else:  # forward ran without the gradient (need_grad=False): recompute with g = grad_output
        g = grad_out.to(acc).expand(z.shape[0]).contiguous()
        grad_scale = 1.0 / divisor if reduction == RED_MEAN else 1.0
    _, grad = _rows_grad(z.device, z, indptr, indices, weights, scale, g, grad_scale, False, True)
    return grad


@torch.library.custom_op("pyaeplus::_laplacian_loss_backward", mutates_args=(), device_types="cuda")
def _laplacian_loss_backward(grad_out: Tensor, z: Tensor, indptr: Tensor, indices: Tensor, weights: Tensor,
                            scale: Optional[Tensor], saved_grad: Tensor, reduction: int, divisor: float) -> Tensor:
    return _backward_impl(grad_out, z, indptr, indices, weights, scale, saved_grad, reduction, divisor)


@_laplacian_loss_backward.register_kernel("cpu")
def _(grad_out, z, indptr, indices, weights, scale, saved_grad, reduction, divisor):
    return _backward_impl(grad_out, z, indptr, indices, weights, scale, saved_grad, reduction, divisor)


@_laplacian_loss_backward.register_fake
def _(grad_out, z, indptr, indices, weights, scale, saved_grad, reduction, divisor):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    z, indptr, indices, weights, scale, reduction, divisor, _need_grad = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(z, indptr, indices, weights, scale, output[1])
    ctx.reduction = reduction
    ctx.divisor = divisor


def _backward(ctx, grad_loss, _grad_saved):
    nones = (None,) * 7
    if not ctx.needs_input_grad[0]:
        return (None,) + nones
    z, indptr, indices, weights, scale, saved = ctx.saved_tensors
    gz = _laplacian_loss_backward(grad_loss, z, indptr, indices, weights, scale, saved, ctx.reduction, ctx.divisor)
    return (gz,) + nones


laplacian_loss.register_autograd(_backward, setup_context=_setup_context)
