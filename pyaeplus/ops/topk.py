"""Custom ops of the top-k sparse activation.

Forward (x is (B, D); the public function reshapes any rank to that):

* ``pyaeplus::topk_sparse(x, k, relu) -> (values (B, k), indices (B, k) int64)``, sorted by
  value descending, ties by ascending index;
* ``pyaeplus::topk_dense(x, k, relu) -> (y (B, D), indices (B, k) int64)``: the dense output
  plus the selected indices (any order) that its backward needs, so the backward never
  re-selects and never reads x.

Backward (each a custom op with its own autograd, so double backward works too); both
write grad_x (B, D) in ONE pass per row (zeros and the k gradients together):

* ``pyaeplus::_topk_sparse_backward(grad_values, indices, values?, D)``: ``values`` (the
  forward's ReLU'd output) is passed only with ``relu=True``, to mask where it is ``<= 0``;
* ``pyaeplus::_topk_dense_backward(grad_y, indices, y?)``: reads grad_y only at the k indices.

Strides: the kernels take a row stride and need a unit element stride; an input whose last
dimension is strided is made contiguous here (``_rowmajor``).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from ..reference import topk as ref
from . import _guard
from ._dispatch import run

Tensor = torch.Tensor


def _triton():
    from ..kernels import topk as m

    return m


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _check(x: Tensor, k: int) -> None:
    # Memory safety for direct torch.ops calls; the public function has checked already.
    if x.dim() != 2 or x.dtype not in _guard.FLOATING:
        raise ValueError(f"x must be 2-d (B, D) and floating, got {x.dtype} {tuple(x.shape)}")
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be in [1, D={x.shape[1]}], got {k}")


def _check_bwd(grad: Tensor, indices: Tensor, D: int, mask: Optional[Tensor], gather: bool) -> None:
    """Shapes and dtypes the backward kernels index by (index values: the CPU kernel raises on one
    outside [0, D), the CUDA and Triton kernels skip it). One boolean expression on the hot path
    (see ``ops/_guard.py``); ``_explain_bwd`` raises the message."""
    gs, js = grad.shape, indices.shape
    if (len(js) == 2 and len(gs) == 2 and indices.dtype is torch.int64 and gs[0] == js[0] and 1 <= D
            and js[1] <= D and gs[1] == (D if gather else js[1]) and grad.dtype in _guard.FLOATING
            and (mask is None or (mask.shape == gs and mask.dtype is grad.dtype and mask.device == grad.device))
            and grad.device == indices.device):
        return
    _explain_bwd(grad, indices, D, mask, gather)


def _explain_bwd(grad: Tensor, indices: Tensor, D: int, mask: Optional[Tensor], gather: bool) -> None:
    if indices.dim() != 2 or indices.dtype != torch.int64 or grad.dim() != 2 or grad.shape[0] != indices.shape[0]:
        raise ValueError(f"indices must be int64 (B, k) matching grad's rows, got {indices.dtype} "
                         f"{tuple(indices.shape)} for grad {tuple(grad.shape)}")
    if not 1 <= D or indices.shape[1] > D:
        raise ValueError(f"D must be >= 1 and >= the {indices.shape[1]} columns of indices, got D={D}")
    width = D if gather else indices.shape[1]
    if grad.shape[1] != width or grad.dtype not in _guard.FLOATING:
        raise ValueError(f"grad must be a floating (B, {width}) tensor, got {grad.dtype} {tuple(grad.shape)}")
    if mask is not None and (mask.shape != grad.shape or mask.dtype != grad.dtype):
        raise ValueError(f"the mask (forward output) must have grad's shape {tuple(grad.shape)} and dtype "
                         f"{grad.dtype}, got {mask.dtype} {tuple(mask.shape)}")
    _guard.same_device("topk backward", grad=grad, indices=indices, mask=mask)


def sort_selected(x: Tensor, idx: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    """Order the k selected indices (B, k) of each row as the spec says (value descending,
    ties by ascending index), for kernels that emit them in ascending index order: a stable
    descending sort of the selected x values keeps equal values in index order. Sorting on
    x, not the ReLU'd values, keeps the order of entries that ReLU maps to 0."""
    xv = x.gather(1, idx)
    xv, perm = torch.sort(xv, dim=1, descending=True, stable=True)
    idx = idx.gather(1, perm)
    return (torch.relu(xv) if relu else xv), idx


# ---- implementations --------------------------------------------------------------------

def _compiled_forward(x: Tensor, k: int, relu: bool, dense: bool) -> tuple[Tensor, Tensor]:
    x = _rowmajor(x)
    B, D = x.shape
    idx = torch.empty((B, k), dtype=torch.int64, device=x.device)
    vals = None if dense else torch.empty((B, k), dtype=x.dtype, device=x.device)
    y = torch.empty((B, D), dtype=x.dtype, device=x.device) if dense else None
    if B == 0:
        return (y if dense else vals), idx
    # x: [B, D] (row stride); vals/idx: [B, k]; y: [B, D]; all written by the kernel.
    is_sorted = _ext.call("topk_forward", x, _ext.ptr(x), B, D, x.stride(0), k, relu, _ext.dtype_code(x),
                          _ext.ptr(vals), _ext.ptr(idx), _ext.ptr(y))
    if dense:
        return y, idx
    if is_sorted is False:  # CUDA, large k: the kernel wrote the selection in index order (CPU: sorted, None)
        vals, idx = sort_selected(x, idx, relu)
    return vals, idx


def _compiled_backward(grad: Tensor, gather: bool, mask: Optional[Tensor], idx: Tensor, D: int) -> Tensor:
    """grad_x (B, D) from grad ((B, k), or (B, D) read at idx when gather) masked by mask > 0."""
    grad = _rowmajor(grad)
    mask = None if mask is None else _rowmajor(mask)
    idx = idx.contiguous()
    B, k = idx.shape
    out = torch.empty((B, D), dtype=grad.dtype, device=grad.device)
    if B == 0:
        return out
    _ext.call("topk_backward", grad, _ext.ptr(grad), grad.stride(0), gather, _ext.ptr(mask),
              0 if mask is None else mask.stride(0), _ext.ptr(idx), B, k, D, _ext.dtype_code(grad), _ext.ptr(out))
    return out


def _triton_backward(grad: Tensor, gather: bool, mask: Optional[Tensor], idx: Tensor, D: int) -> Tensor:
    return _triton().topk_backward(_rowmajor(grad), gather, None if mask is None else _rowmajor(mask),
                                   idx.contiguous(), D)


# ---- forward ops (one body for the CUDA op and its CPU kernel: ``run`` picks what the device runs) --

def _forward(x: Tensor, k: int, relu: bool, dense: bool) -> tuple[Tensor, Tensor]:
    _check(x, k)
    return run("topk_dense" if dense else "topk_sparse", x.device,
               triton=lambda: _triton().topk_forward(_rowmajor(x), k, relu, dense=dense),
               cuda=lambda: _compiled_forward(x, k, relu, dense), cpu=lambda: _compiled_forward(x, k, relu, dense),
               torch_=lambda: (ref.topk_dense if dense else ref.topk_sparse)(x, k, relu))


def _forward_fake(x: Tensor, k: int, dense: bool) -> tuple[Tensor, Tensor]:
    _check(x, k)
    return x.new_empty(x.shape if dense else (x.shape[0], k)), x.new_empty((x.shape[0], k), dtype=torch.int64)


@torch.library.custom_op("pyaeplus::topk_sparse", mutates_args=(), device_types="cuda")
def topk_sparse(x: Tensor, k: int, relu: bool) -> tuple[Tensor, Tensor]:
    return _forward(x, k, relu, False)


topk_sparse.register_kernel("cpu")(lambda x, k, relu: _forward(x, k, relu, False))
topk_sparse.register_fake(lambda x, k, relu: _forward_fake(x, k, False))


@torch.library.custom_op("pyaeplus::topk_dense", mutates_args=(), device_types="cuda")
def topk_dense(x: Tensor, k: int, relu: bool) -> tuple[Tensor, Tensor]:
    return _forward(x, k, relu, True)


topk_dense.register_kernel("cpu")(lambda x, k, relu: _forward(x, k, relu, True))
topk_dense.register_fake(lambda x, k, relu: _forward_fake(x, k, True))


# ---- backward ops -----------------------------------------------------------------------

def _backward(grad: Tensor, indices: Tensor, mask: Optional[Tensor], D: int, gather: bool) -> Tensor:
    _check_bwd(grad, indices, D, mask, gather)
    return run("topk_dense_backward" if gather else "topk_sparse_backward", grad.device,
               triton=lambda: _triton_backward(grad, gather, mask, indices, D),
               cuda=lambda: _compiled_backward(grad, gather, mask, indices, D),
               cpu=lambda: _compiled_backward(grad, gather, mask, indices, D),
               torch_=lambda: (ref.topk_dense_backward(grad, indices, mask) if gather else
                               ref.topk_sparse_backward(grad, indices, mask, D)))


@torch.library.custom_op("pyaeplus::_topk_sparse_backward", mutates_args=(), device_types="cuda")
def _topk_sparse_backward(grad_values: Tensor, indices: Tensor, values: Optional[Tensor], D: int) -> Tensor:
    return _backward(grad_values, indices, values, D, False)


_topk_sparse_backward.register_kernel("cpu")(lambda g, indices, values, D: _backward(g, indices, values, D, False))
_topk_sparse_backward.register_fake(lambda g, indices, values, D: g.new_empty((g.shape[0], D)))


@torch.library.custom_op("pyaeplus::_topk_dense_backward", mutates_args=(), device_types="cuda")
def _topk_dense_backward(grad_y: Tensor, indices: Tensor, y: Optional[Tensor]) -> Tensor:
    return _backward(grad_y, indices, y, grad_y.shape[1], True)


_topk_dense_backward.register_kernel("cpu")(lambda g, indices, y: _backward(g, indices, y, g.shape[1], True))
_topk_dense_backward.register_fake(lambda g, indices, y: g.new_empty(g.shape))


# ---- autograd ---------------------------------------------------------------------------

def _setup(ctx, inputs, output):
    x, k, relu = inputs
    out, indices = output  # values (B, k) or y (B, D)
    ctx.D = x.shape[1]
    ctx.save_for_backward(indices, out if relu else None)  # the ReLU mask
    ctx.mark_non_differentiable(indices)


def _autograd(backward_op):
    """The backward of a forward op: ``backward_op(grad, indices, mask, D)`` when x needs a gradient."""
    def backward(ctx, grad_out, _grad_indices):
        indices, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or grad_out is None:
            return None, None, None
        return backward_op(grad_out, indices, mask, ctx.D), None, None
    return backward


topk_sparse.register_autograd(_autograd(_topk_sparse_backward), setup_context=_setup)
topk_dense.register_autograd(_autograd(lambda g, indices, y, D: _topk_dense_backward(g, indices, y)),
                             setup_context=_setup)


# Double backward: both backward ops are linear in their gradient input.
def _sparse_bwd_setup(ctx, inputs, output):
    grad_values, indices, values, D = inputs
    ctx.save_for_backward(indices, values)


def _sparse_bwd_bwd(ctx, gg):
    indices, values = ctx.saved_tensors
    g = None
    if ctx.needs_input_grad[0]:
        g = gg.gather(1, indices)
        if values is not None:
            g = torch.where(values > 0, g, torch.zeros_like(g))
    return g, None, None, None


_topk_sparse_backward.register_autograd(_sparse_bwd_bwd, setup_context=_sparse_bwd_setup)


def _dense_bwd_setup(ctx, inputs, output):
    grad_y, indices, y = inputs
    ctx.save_for_backward(indices, y)


def _dense_bwd_bwd(ctx, gg):
    indices, y = ctx.saved_tensors
    # The map grad_y -> grad_x is a masked projection: its own adjoint.
    g = _topk_dense_backward(gg, indices, y) if ctx.needs_input_grad[0] else None
    return g, None, None


_topk_dense_backward.register_autograd(_dense_bwd_bwd, setup_context=_dense_bwd_setup)
