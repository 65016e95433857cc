"""Custom ops of the top-k sparse activation.

Forward (x is (B, D); the public function reshapes any rank to that):

* ``pyaeplus::topk_sparse(x, k, relu) -> (values (B, k), indices (B, k) int64)``, sorted by
  value descending, ties by ascending index;
* ``pyaeplus::topk_dense(x, k, relu) -> (y (B, D), indices (B, k) int64)``: the dense output
  plus the selected indices (any order) that its backward needs, so the backward never
  re-selects and never reads x.

Backward (each a custom op with its own autograd, so double backward works too); both
write grad_x (B, D) in ONE pass per row (zeros and the k gradients together):

* ``pyaeplus::topk_sparse_backward(grad_values, indices, values?, D)``: ``values`` (the
  forward's ReLU'd output) is passed only with ``relu=True``, to mask where it is ``<= 0``;
* ``pyaeplus::topk_dense_backward(grad_y, indices, y?)``: reads grad_y only at the k indices.

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

def _cpu_forward(x: Tensor, k: int, relu: bool, dense: bool) -> tuple[Tensor, Tensor]:
    x = _rowmajor(x)
    B, D = x.shape
    idx = torch.empty((B, k), dtype=torch.int64, device=x.device)
    vals = None if dense else torch.empty((B, k), dtype=x.dtype, device=x.device)
    y = torch.empty((B, D), dtype=x.dtype, device=x.device) if dense else None
    if B > 0:
        _ext.cpu_ext().topk_forward(_ext.ptr(x), B, D, x.stride(0), k, relu, _ext.dtype_code(x),
                                    _ext.ptr(vals), _ext.ptr(idx), _ext.ptr(y))
    return (y if dense else vals), idx


def _cuda_forward(x: Tensor, k: int, relu: bool, dense: bool) -> tuple[Tensor, Tensor]:
    x = _rowmajor(x)
    B, D = x.shape
    idx = torch.empty((B, k), dtype=torch.int64, device=x.device)
    vals = None if dense else torch.empty((B, k), dtype=x.dtype, device=x.device)
    y = torch.empty((B, D), dtype=x.dtype, device=x.device) if dense else None
    if B == 0:
        return (y if dense else vals), idx
    is_sorted = _ext.cuda_ext().topk_forward(_ext.ptr(x), B, D, x.stride(0), k, relu, _ext.dtype_code(x),
                                             _ext.ptr(vals), _ext.ptr(idx), _ext.ptr(y), _ext.stream(x))
    if dense:
        return y, idx
    if not is_sorted:  # large k: the kernel wrote the selection in index order
        vals, idx = sort_selected(x, idx, relu)
    return vals, idx


def _backward_impl(grad: Tensor, gather: bool, mask: Optional[Tensor], idx: Tensor, D: int) -> Tensor:
    """grad_x (B, D) from grad ((B, k), or (B, D) read at idx when gather) masked by mask > 0."""
    grad = _rowmajor(grad)
    mask = None if mask is None else _rowmajor(mask)
    idx = idx.contiguous()
    B, k = idx.shape
    out = torch.empty((B, D), dtype=grad.dtype, device=grad.device)
    if B == 0:
        return out
    args = (_ext.ptr(grad), grad.stride(0), gather, _ext.ptr(mask), 0 if mask is None else mask.stride(0),
            _ext.ptr(idx), B, k, D, _ext.dtype_code(grad), _ext.ptr(out))
    if grad.device.type == "cuda":
        _ext.cuda_ext().topk_backward(*args, _ext.stream(grad))
    else:
        _ext.cpu_ext().topk_backward(*args)
    return out


def _triton_backward(grad: Tensor, gather: bool, mask: Optional[Tensor], idx: Tensor, D: int) -> Tensor:
    return _triton().topk_backward(_rowmajor(grad), gather, None if mask is None else _rowmajor(mask),
                                   idx.contiguous(), D)


# ---- forward ops ------------------------------------------------------------------------

@torch.library.custom_op("pyaeplus::topk_sparse", mutates_args=(), device_types="cuda")
def topk_sparse(x: Tensor, k: int, relu: bool) -> tuple[Tensor, Tensor]:
    _check(x, k)
    return run("topk_sparse", x.device,
               triton=lambda: _triton().topk_forward(_rowmajor(x), k, relu, dense=False),
               cuda=lambda: _cuda_forward(x, k, relu, dense=False),
               torch_=lambda: ref.topk_sparse(x, k, relu))


@topk_sparse.register_kernel("cpu")
def _(x, k, relu):
    _check(x, k)
    return run("topk_sparse", x.device, cpu=lambda: _cpu_forward(x, k, relu, dense=False),
               torch_=lambda: ref.topk_sparse(x, k, relu))


@topk_sparse.register_fake
def _(x, k, relu):
    _check(x, k)
    B = x.shape[0]
    return x.new_empty((B, k)), x.new_empty((B, k), dtype=torch.int64)


@torch.library.custom_op("pyaeplus::topk_dense", mutates_args=(), device_types="cuda")
def topk_dense(x: Tensor, k: int, relu: bool) -> tuple[Tensor, Tensor]:
    _check(x, k)
    return run("topk_dense", x.device,
               triton=lambda: _triton().topk_forward(_rowmajor(x), k, relu, dense=True),
               cuda=lambda: _cuda_forward(x, k, relu, dense=True),
               torch_=lambda: ref.topk_dense(x, k, relu))


@topk_dense.register_kernel("cpu")
def _(x, k, relu):
    _check(x, k)
    return run("topk_dense", x.device, cpu=lambda: _cpu_forward(x, k, relu, dense=True),
               torch_=lambda: ref.topk_dense(x, k, relu))


@topk_dense.register_fake
def _(x, k, relu):
    _check(x, k)
    B, D = x.shape
    return x.new_empty((B, D)), x.new_empty((B, k), dtype=torch.int64)


# ---- backward ops -----------------------------------------------------------------------

@torch.library.custom_op("pyaeplus::topk_sparse_backward", mutates_args=(), device_types="cuda")
def topk_sparse_backward(grad_values: Tensor, indices: Tensor, values: Optional[Tensor], D: int) -> Tensor:
    _check_bwd(grad_values, indices, D, values, False)
    return run("topk_sparse_backward", grad_values.device,
               triton=lambda: _triton_backward(grad_values, False, values, indices, D),
               cuda=lambda: _backward_impl(grad_values, False, values, indices, D),
               torch_=lambda: ref.topk_sparse_backward(grad_values, indices, values, D))


@topk_sparse_backward.register_kernel("cpu")
def _(grad_values, indices, values, D):
    _check_bwd(grad_values, indices, D, values, False)
    return run("topk_sparse_backward", grad_values.device,
               cpu=lambda: _backward_impl(grad_values, False, values, indices, D),
               torch_=lambda: ref.topk_sparse_backward(grad_values, indices, values, D))


@topk_sparse_backward.register_fake
def _(grad_values, indices, values, D):
    return grad_values.new_empty((grad_values.shape[0], D))


@torch.library.custom_op("pyaeplus::topk_dense_backward", mutates_args=(), device_types="cuda")
def topk_dense_backward(grad_y: Tensor, indices: Tensor, y: Optional[Tensor]) -> Tensor:
    D = grad_y.shape[1]
    _check_bwd(grad_y, indices, D, y, True)
    return run("topk_dense_backward", grad_y.device,
               triton=lambda: _triton_backward(grad_y, True, y, indices, D),
               cuda=lambda: _backward_impl(grad_y, True, y, indices, D),
               torch_=lambda: ref.topk_dense_backward(grad_y, indices, y))


@topk_dense_backward.register_kernel("cpu")
def _(grad_y, indices, y):
    D = grad_y.shape[1]
    _check_bwd(grad_y, indices, D, y, True)
    return run("topk_dense_backward", grad_y.device,
               cpu=lambda: _backward_impl(grad_y, True, y, indices, D),
               torch_=lambda: ref.topk_dense_backward(grad_y, indices, y))


@topk_dense_backward.register_fake
def _(grad_y, indices, y):
    return grad_y.new_empty(grad_y.shape)


# ---- autograd ---------------------------------------------------------------------------

def _sparse_setup(ctx, inputs, output):
    x, k, relu = inputs
    values, indices = output
    ctx.D = x.shape[1]
    ctx.relu = relu
    ctx.save_for_backward(indices, values if relu else None)
    ctx.mark_non_differentiable(indices)


def _sparse_bwd(ctx, grad_values, grad_indices):
    indices, values = ctx.saved_tensors
    gx = None
    if ctx.needs_input_grad[0] and grad_values is not None:
        gx = topk_sparse_backward(grad_values, indices, values, ctx.D)
    return gx, None, None


topk_sparse.register_autograd(_sparse_bwd, setup_context=_sparse_setup)


def _dense_setup(ctx, inputs, output):
    x, k, relu = inputs
    y, indices = output
    ctx.save_for_backward(indices, y if relu else None)
    ctx.mark_non_differentiable(indices)


def _dense_bwd(ctx, grad_y, grad_indices):
    indices, y = ctx.saved_tensors
    gx = None
    if ctx.needs_input_grad[0] and grad_y is not None:
        gx = topk_dense_backward(grad_y, indices, y)
    return gx, None, None


topk_dense.register_autograd(_dense_bwd, setup_context=_dense_setup)


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


topk_sparse_backward.register_autograd(_sparse_bwd_bwd, setup_context=_sparse_bwd_setup)


def _dense_bwd_setup(ctx, inputs, output):
    grad_y, indices, y = inputs
    ctx.save_for_backward(indices, y)


def _dense_bwd_bwd(ctx, gg):
    indices, y = ctx.saved_tensors
    # The map grad_y -> grad_x is a masked projection: its own adjoint.
    g = topk_dense_backward(gg, indices, y) if ctx.needs_input_grad[0] else None
    return g, None, None


topk_dense_backward.register_autograd(_dense_bwd_bwd, setup_context=_dense_bwd_setup)
