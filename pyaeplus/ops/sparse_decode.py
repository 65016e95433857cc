"""Custom ops for the sparse decoder.

* ``pyaeplus::sparse_decode(values, indices, weight, bias?) -> out``: values/indices (B, k),
  weight (D, N), bias (N,) or None, out (B, N).
* ``pyaeplus::_sparse_decode_grad_values(grad_out, indices, weight) -> (B, k)``
* ``pyaeplus::_sparse_decode_grad_weight(grad_out, values, indices, weight) -> (D, N)``:
  deterministic on every backend (reverse index, fixed summation order, no float atomics).
* ``pyaeplus::_sparse_decode_backward(grad_out, values, indices, weight) -> (grad_values, grad_weight)``
  when both are needed: on the CPU one sweep over the reverse index yields both (each entry's
  grad_out row is loaded once, weight rows are read in order instead of gathered).

The backward calls only what ``ctx.needs_input_grad`` asks for. Every implementation here receives contiguous tensors
(``.contiguous()`` below: a no-op for the usual layouts). Every op checks shapes, dtypes and devices at entry
(``ops/_guard.py``); index values are bounds-checked by the CPU kernels (ValueError) and masked by the CUDA and
Triton kernels (an out-of-range index contributes zero).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from .._amp import acc_dtype
from ..reference import sparse_decode as ref
from . import _guard
from ._dispatch import run


def _triton():
    from ..kernels import sparse_decode as m

    return m


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


# ---- forward ------------------------------------------------------------------------------

def _forward_compiled(values, indices, weight, bias) -> torch.Tensor:
    values, indices, weight, bias = _c(values), _c(indices), _c(weight), _c(bias)
    B, K = values.shape
    D, N = weight.shape
    out = torch.empty((B, N), dtype=values.dtype, device=values.device)
    _ext.call("sparse_decode_forward", values, _ext.ptr(values), _ext.ptr(indices), _ext.ptr(weight), _ext.ptr(bias),
              _ext.ptr(out), B, K, D, N, _ext.dtype_code(values), _ext.dtype_code(indices))
    return out


def _forward_triton(values, indices, weight, bias) -> torch.Tensor:
    return _triton().sparse_decode_forward(_c(values), _c(indices), _c(weight), _c(bias))


def _forward(values, indices, weight, bias) -> torch.Tensor:
    """The body of the op on either device (the CUDA op and its CPU kernel): ``run`` picks."""
    _guard.sparse_decode("sparse_decode", values, indices, weight, bias)
    return run("sparse_decode", values.device,
               triton=lambda: _forward_triton(values, indices, weight, bias),
               cuda=lambda: _forward_compiled(values, indices, weight, bias),
               cpu=lambda: _forward_compiled(values, indices, weight, bias),
               torch_=lambda: ref.sparse_decode(values, indices, weight, bias))


@torch.library.custom_op("pyaeplus::sparse_decode", mutates_args=(), device_types="cuda")
def sparse_decode(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _forward(values, indices, weight, bias)


sparse_decode.register_kernel("cpu")(_forward)
sparse_decode.register_fake(lambda values, indices, weight, bias: values.new_empty((values.shape[0], weight.shape[1])))


# ---- grad_values --------------------------------------------------------------------------

def _grad_values_compiled(grad_out, indices, weight) -> torch.Tensor:
    grad_out, indices, weight = _c(grad_out), _c(indices), _c(weight)
    B, K = indices.shape
    D, N = weight.shape
    gv = torch.empty((B, K), dtype=weight.dtype, device=weight.device)
    _ext.call("sparse_decode_grad_values", weight, _ext.ptr(grad_out), _ext.ptr(indices), _ext.ptr(weight),
              _ext.ptr(gv), B, K, D, N, _ext.dtype_code(weight), _ext.dtype_code(indices))
    return gv


def _grad_values(grad_out, indices, weight) -> torch.Tensor:
    _guard.sparse_decode_grad("_sparse_decode_grad_values", grad_out, indices, weight)
    return run("sparse_decode", weight.device,
               triton=lambda: _triton().sparse_decode_grad_values(_c(grad_out), _c(indices), _c(weight)),
               cuda=lambda: _grad_values_compiled(grad_out, indices, weight),
               cpu=lambda: _grad_values_compiled(grad_out, indices, weight),
               torch_=lambda: ref.sparse_decode_grad_values(grad_out, indices, weight))


@torch.library.custom_op("pyaeplus::_sparse_decode_grad_values", mutates_args=(), device_types="cuda")
def _sparse_decode_grad_values(grad_out: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _grad_values(grad_out, indices, weight)


_sparse_decode_grad_values.register_kernel("cpu")(_grad_values)
_sparse_decode_grad_values.register_fake(lambda grad_out, indices, weight: weight.new_empty(indices.shape))


# ---- grad_weight --------------------------------------------------------------------------

def _grad_weight_cpu(grad_out, values, indices, weight, with_values: bool):
    # The C++ kernel builds the reverse index itself (counting sort) and writes every row of
    # grad_weight; with_values also fills grad_values in the same sweep (weight read row by row).
    grad_out, values, indices, weight = _c(grad_out), _c(values), _c(indices), _c(weight)
    B, K = indices.shape
    D, N = weight.shape
    gw = torch.empty((D, N), dtype=weight.dtype, device=weight.device)
    gv = torch.empty((B, K), dtype=weight.dtype, device=weight.device) if with_values else None
    _ext.call("sparse_decode_grad_weight", weight, _ext.ptr(grad_out), _ext.ptr(values), _ext.ptr(indices),
              _ext.ptr(weight), _ext.ptr(gw), _ext.ptr(gv), B, K, D, N, _ext.dtype_code(weight),
              _ext.dtype_code(indices))
    return gv, gw


def _grad_weight_cuda(grad_out, values, indices, weight) -> torch.Tensor:
    grad_out, values, indices = _c(grad_out), _c(values), _c(indices)
    D, N = weight.shape
    K = indices.shape[1]
    order, indptr = ref.sparse_decode_reverse_index(indices, D)
    sorted_values = values.reshape(-1)[order].contiguous()        # [B*K]
    sorted_rows = torch.div(order, K, rounding_mode="floor")       # [B*K] batch row of each entry
    gw = torch.empty((D, N), dtype=weight.dtype, device=weight.device)
    _ext.call("sparse_decode_grad_weight", weight, _ext.ptr(grad_out), _ext.ptr(sorted_values),
              _ext.ptr(sorted_rows), _ext.ptr(indptr), _ext.ptr(gw), D, N, _ext.dtype_code(weight))
    return gw


def _grad_weight_triton(grad_out, values, indices, weight) -> torch.Tensor:
    D = weight.shape[0]
    order, indptr = ref.sparse_decode_reverse_index(indices, D)
    return _triton().sparse_decode_grad_weight(_c(grad_out), _c(values), _c(indices), order, indptr, D)


def _grad_weight(grad_out, values, indices, weight) -> torch.Tensor:
    _guard.sparse_decode_grad("_sparse_decode_grad_weight", grad_out, indices, weight, values)
    return run("sparse_decode", weight.device,
               triton=lambda: _grad_weight_triton(grad_out, values, indices, weight),
               cuda=lambda: _grad_weight_cuda(grad_out, values, indices, weight),
               cpu=lambda: _grad_weight_cpu(grad_out, values, indices, weight, False)[1],
               torch_=lambda: ref.sparse_decode_grad_weight(grad_out, values, indices, weight))


@torch.library.custom_op("pyaeplus::_sparse_decode_grad_weight", mutates_args=(), device_types="cuda")
def _sparse_decode_grad_weight(grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                               weight: torch.Tensor) -> torch.Tensor:
    return _grad_weight(grad_out, values, indices, weight)


_sparse_decode_grad_weight.register_kernel("cpu")(_grad_weight)
_sparse_decode_grad_weight.register_fake(lambda grad_out, values, indices, weight: weight.new_empty(weight.shape))


# ---- both gradients ------------------------------------------------------------------------

def _both_grads(grad_out, values, indices, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_values (B, k), grad_weight (D, N)). On the CPU one fused sweep (grad_values from the
    grad_weight pass: no random gather of weight rows); on CUDA two kernels one after the other."""
    _guard.sparse_decode_grad("_sparse_decode_backward", grad_out, indices, weight, values)
    return run("sparse_decode", weight.device,
               triton=lambda: (_triton().sparse_decode_grad_values(_c(grad_out), _c(indices), _c(weight)),
                               _grad_weight_triton(grad_out, values, indices, weight)),
               cuda=lambda: (_grad_values_compiled(grad_out, indices, weight),
                             _grad_weight_cuda(grad_out, values, indices, weight)),
               cpu=lambda: _grad_weight_cpu(grad_out, values, indices, weight, True),
               torch_=lambda: (ref.sparse_decode_grad_values(grad_out, indices, weight),
                               ref.sparse_decode_grad_weight(grad_out, values, indices, weight)))


@torch.library.custom_op("pyaeplus::_sparse_decode_backward", mutates_args=(), device_types="cuda")
def _sparse_decode_backward(grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                            weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _both_grads(grad_out, values, indices, weight)


_sparse_decode_backward.register_kernel("cpu")(_both_grads)
_sparse_decode_backward.register_fake(lambda grad_out, values, indices, weight: (weight.new_empty(indices.shape),
                                                                                 weight.new_empty(weight.shape)))


# ---- autograd -----------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    values, indices, weight, bias = inputs
    ctx.save_for_backward(values, indices, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    values, indices, weight = ctx.saved_tensors
    grad_values = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0] and ctx.needs_input_grad[2]:
        grad_values, grad_weight = torch.ops.pyaeplus._sparse_decode_backward(grad_out, values, indices, weight)
    elif ctx.needs_input_grad[0]:
        grad_values = torch.ops.pyaeplus._sparse_decode_grad_values(grad_out, indices, weight)
    elif ctx.needs_input_grad[2]:
        grad_weight = torch.ops.pyaeplus._sparse_decode_grad_weight(grad_out, values, indices, weight)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_out.sum(0, dtype=acc_dtype(grad_out.dtype)).to(grad_out.dtype)
    return grad_values, None, grad_weight, grad_bias


sparse_decode.register_autograd(_backward, setup_context=_setup_context)
