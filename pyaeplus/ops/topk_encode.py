"""Custom ops of the fused top-k encoder: ``Linear`` + top-k with a backward that touches only the
selected latents.

Forward (x (B, N), weight (D, N) as in ``nn.Linear``, bias (D,) or None):

* ``pyaeplus::topk_encode(x, weight, bias, k, relu) -> (values (B, k), indices (B, k) int64)``:
  per row, sorted by value descending (ties: lowest index first);
* ``pyaeplus::batch_topk_encode(x, weight, bias, k, relu) -> (values (E,), rows (E,), cols (E,))``:
  BatchTopK, the top ``E = k * B`` entries of the whole batch as COO sorted by (row, column).

On every backend the forward is ``torch.addmm`` (BLAS / cuBLAS) followed by the top-k op of the
same backend (``pyaeplus::topk_sparse``); per-row top-k runs it on row chunks, so the (B, D)
pre-activation only ever exists one chunk (``_CHUNK_ELEMENTS``) at a time. BatchTopK needs the
whole batch for its global threshold.

Backward (custom ops too), on the selected entries in CSR form by batch row (``crow`` (B+1,),
``cols`` (E,), ``grad`` (E,) with the ReLU mask applied; per-row top-k is ``crow = [0, k, ...]``):

* ``pyaeplus::_topk_encode_grad_input(grad, crow, cols, weight) -> grad_x (B, N)``;
* ``pyaeplus::_topk_encode_grad_weight(grad, crow, cols, x, D) -> (grad_weight (D, N), grad_bias (D,))``:
  deterministic on every backend (reverse index by latent, fixed summation order, no float atomics;
  the CPU kernel builds it by counting sort, the GPU paths by a stable ``torch.sort``).

Autocast does not reach inside the ops (the public function casts the inputs as ``F.linear`` does);
every implementation receives contiguous tensors (``.contiguous()`` below).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from ..reference import topk_encode as ref
from ..reference.sparse_decode import sparse_decode_reverse_index
from ._dispatch import run
from .topk import topk_sparse

Tensor = torch.Tensor

# Pre-activation elements per forward chunk (bounds the forward's temporary memory): 64 Mi (256 MiB
# fp32) on the CPU, 256 Mi on CUDA. Larger chunks are faster: each matmul call re-packs the whole
# (D, N) weight, and on the 2-core CPU 256-row calls ran the matmul markedly slower than one call
# over the batch (profile of the SAE step: 1.18 s in eight addmm calls).
_CHUNK_ELEMENTS = {"cpu": 1 << 26, "cuda": 1 << 28}


def _triton():
    from ..kernels import topk_encode as m

    return m


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int) -> None:
    # Memory safety for direct torch.ops calls; the public function has checked already.
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x (B, N) and weight (D, N) must be 2-d with the same N, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"weight and bias must have x's dtype {x.dtype}")
    if not 1 <= k <= weight.shape[0]:
        raise ValueError(f"k must be in [1, D={weight.shape[0]}], got {k}")


def _check_bwd(grad: Tensor, crow: Tensor, cols: Tensor, other: Tensor) -> None:
    if grad.dim() != 1 or cols.shape != grad.shape or crow.dim() != 1 or crow.shape[0] < 1 or other.dim() != 2:
        raise ValueError(f"grad and cols must be (E,), crow (B+1,), and the dense operand 2-d, got "
                         f"{tuple(grad.shape)}, {tuple(cols.shape)}, {tuple(crow.shape)}, {tuple(other.shape)}")
    if crow.dtype != torch.int64 or cols.dtype != torch.int64:
        raise TypeError(f"crow and cols must be int64, got {crow.dtype} and {cols.dtype}")


# ---- forward ------------------------------------------------------------------------------

def _pre(x: Tensor, weight: Tensor, bias: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    with torch.autocast(x.device.type, enabled=False):
        if bias is None:
            return torch.mm(x, weight.t(), out=out)
        return torch.addmm(bias, x, weight.t(), out=out)


def _chunk_rows(x: Tensor, D: int) -> int:
    return max(1, _CHUNK_ELEMENTS.get(x.device.type, 1 << 28) // D)


def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int, relu: bool) -> tuple[Tensor, Tensor]:
    """Row chunks of addmm + the top-k op (which picks the implementation of the backend in force)."""
    B, D = x.shape[0], weight.shape[0]
    rows = _chunk_rows(x, D)
    if B <= rows:
        return topk_sparse(_pre(x, weight, bias), k, relu)
    values = torch.empty((B, k), dtype=x.dtype, device=x.device)
    indices = torch.empty((B, k), dtype=torch.int64, device=x.device)
    # One buffer for every chunk: its pages are touched once (a fresh large tensor per chunk pays
    # the page faults again).
    buf = torch.empty((rows, weight.shape[0]), dtype=x.dtype, device=x.device)
    for r0 in range(0, B, rows):
        xc = x[r0:r0 + rows]
        v, i = topk_sparse(_pre(xc, weight, bias, out=buf[:xc.shape[0]]), k, relu)
        values[r0:r0 + rows] = v
        indices[r0:r0 + rows] = i
    return values, indices


def _batch_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int,
                   relu: bool) -> tuple[Tensor, Tensor, Tensor]:
    B, D = x.shape[0], weight.shape[0]
    # One global threshold: the batch's (B, D) pre-activation seen as one row of B * D entries.
    vals, flat = topk_sparse(_pre(x, weight, bias).reshape(1, B * D), k * B, relu)
    flat, order = torch.sort(flat[0])                  # row-major order, as COO consumers expect
    return vals[0].gather(0, order), torch.div(flat, D, rounding_mode="floor"), flat % D


def _run_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int, relu: bool, *, batch: bool):
    """The body of both forward ops on either device (the CUDA op and its CPU kernel)."""
    _check(x, weight, bias, k)
    x, weight, bias = _c(x), _c(weight), _c(bias)
    fwd = lambda: (_batch_forward if batch else _forward)(x, weight, bias, k, relu)  # noqa: E731
    reference = lambda: (ref.batch_topk_encode if batch else ref.topk_encode)(x, weight, bias, k, relu)  # noqa: E731
    return run("topk_encode", x.device, triton=fwd, cuda=fwd, cpu=fwd, torch_=reference)


def _forward_fake(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int, batch: bool):
    _check(x, weight, bias, k)
    B = x.shape[0]
    if batch:
        return x.new_empty((k * B,)), x.new_empty((k * B,), dtype=torch.int64), x.new_empty((k * B,), dtype=torch.int64)
    return x.new_empty((B, k)), x.new_empty((B, k), dtype=torch.int64)


@torch.library.custom_op("pyaeplus::topk_encode", mutates_args=(), device_types="cuda")
def topk_encode(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int, relu: bool) -> tuple[Tensor, Tensor]:
    return _run_forward(x, weight, bias, k, relu, batch=False)


topk_encode.register_kernel("cpu")(lambda x, weight, bias, k, relu: _run_forward(x, weight, bias, k, relu, batch=False))
topk_encode.register_fake(lambda x, weight, bias, k, relu: _forward_fake(x, weight, bias, k, False))


@torch.library.custom_op("pyaeplus::batch_topk_encode", mutates_args=(), device_types="cuda")
def batch_topk_encode(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int,
                      relu: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _run_forward(x, weight, bias, k, relu, batch=True)


batch_topk_encode.register_kernel("cpu")(lambda x, weight, bias, k, relu: _run_forward(x, weight, bias, k, relu,
                                                                                      batch=True))
batch_topk_encode.register_fake(lambda x, weight, bias, k, relu: _forward_fake(x, weight, bias, k, True))


# ---- backward -----------------------------------------------------------------------------

def _grad_input_compiled(grad, crow, cols, weight) -> Tensor:
    grad, crow, cols, weight = _c(grad), _c(crow), _c(cols), _c(weight)
    B, (D, N) = crow.shape[0] - 1, weight.shape
    out = torch.empty((B, N), dtype=weight.dtype, device=weight.device)
    # grad, cols: [E]; crow: [B+1]; weight: [D, N]; out: [B, N]
    _ext.call("topk_encode_grad_input", weight, _ext.ptr(grad), _ext.ptr(crow), _ext.ptr(cols), _ext.ptr(weight),
              _ext.ptr(out), B, cols.shape[0], D, N, _ext.dtype_code(weight))
    return out


def _reverse_index(grad: Tensor, crow: Tensor, cols: Tensor, D: int) -> tuple[Tensor, Tensor, Tensor]:
    """(grad, batch row) of each entry grouped by latent (stable order) and the CSR indptr (D+1,)."""
    order, indptr = sparse_decode_reverse_index(cols, D)
    rows = ref.entry_rows(crow, cols.shape[0])
    return grad[order].contiguous(), rows[order].contiguous(), indptr


def _grad_weight_compiled(grad, crow, cols, x, D: int) -> tuple[Tensor, Tensor]:
    if x.device.type == "cpu":
        # The C++ kernel builds the reverse index itself from (grad, crow, cols) (counting sort).
        entries = _c(grad), _c(crow), _c(cols)
    else:  # the CUDA kernel takes the entries grouped by latent: (grad, batch row) (E,), indptr (D+1,)
        entries = _reverse_index(grad, crow, cols, D)
    x = _c(x)
    B, N = x.shape
    gw = torch.empty((D, N), dtype=x.dtype, device=x.device)
    gb = torch.empty((D,), dtype=x.dtype, device=x.device)
    _ext.call("topk_encode_grad_weight", x, *(_ext.ptr(t) for t in entries), _ext.ptr(x), _ext.ptr(gw), _ext.ptr(gb),
              B, grad.shape[0], D, N, _ext.dtype_code(x))
    return gw, gb


def _grad_input(grad: Tensor, crow: Tensor, cols: Tensor, weight: Tensor) -> Tensor:
    _check_bwd(grad, crow, cols, weight)
    return run("topk_encode", weight.device,
               triton=lambda: _triton().grad_input(_c(grad), _c(crow), _c(cols), _c(weight)),
               cuda=lambda: _grad_input_compiled(grad, crow, cols, weight),
               cpu=lambda: _grad_input_compiled(grad, crow, cols, weight),
               torch_=lambda: ref.grad_input(grad, crow, cols, weight))


@torch.library.custom_op("pyaeplus::_topk_encode_grad_input", mutates_args=(), device_types="cuda")
def _topk_encode_grad_input(grad: Tensor, crow: Tensor, cols: Tensor, weight: Tensor) -> Tensor:
    return _grad_input(grad, crow, cols, weight)


_topk_encode_grad_input.register_kernel("cpu")(_grad_input)
_topk_encode_grad_input.register_fake(lambda grad, crow, cols, weight: weight.new_empty((crow.shape[0] - 1,
                                                                                         weight.shape[1])))


def _grad_weight(grad: Tensor, crow: Tensor, cols: Tensor, x: Tensor, D: int) -> tuple[Tensor, Tensor]:
    _check_bwd(grad, crow, cols, x)
    return run("topk_encode", x.device,
               triton=lambda: _triton().grad_weight(*_reverse_index(grad, crow, cols, D), _c(x)),
               cuda=lambda: _grad_weight_compiled(grad, crow, cols, x, D),
               cpu=lambda: _grad_weight_compiled(grad, crow, cols, x, D),
               torch_=lambda: ref.grad_weight(grad, crow, cols, x, D))


@torch.library.custom_op("pyaeplus::_topk_encode_grad_weight", mutates_args=(), device_types="cuda")
def _topk_encode_grad_weight(grad: Tensor, crow: Tensor, cols: Tensor, x: Tensor, D: int) -> tuple[Tensor, Tensor]:
    return _grad_weight(grad, crow, cols, x, D)


_topk_encode_grad_weight.register_kernel("cpu")(_grad_weight)
_topk_encode_grad_weight.register_fake(lambda grad, crow, cols, x, D: (x.new_empty((D, x.shape[1])),
                                                                       x.new_empty((D,))))


# ---- autograd -----------------------------------------------------------------------------

def _input_grads(ctx, grad, values, crow, cols):
    """(grad_x, grad_weight, grad_bias) from the entries' gradient (E,) and CSR (crow, cols)."""
    x, weight = ctx.saved_tensors[:2]
    if grad is None:
        return None, None, None
    if values is not None:  # ReLU: no gradient where the kept value is <= 0
        grad = torch.where(values > 0, grad, torch.zeros_like(grad))
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    gx = gw = gb = None
    if need_x:
        gx = _topk_encode_grad_input(grad, crow, cols, weight)
    if need_w or (ctx.has_bias and need_b):
        gw, gb = _topk_encode_grad_weight(grad, crow, cols, x, weight.shape[0])
    return gx, gw if need_w else None, gb if ctx.has_bias and need_b else None


def _setup(ctx, inputs, output):
    x, weight, bias, k, relu = inputs
    values, indices = output
    ctx.has_bias, ctx.relu = bias is not None, relu
    ctx.save_for_backward(x, weight, values, indices)
    ctx.mark_non_differentiable(indices)


def _backward(ctx, grad_values, _grad_indices):
    values, indices = ctx.saved_tensors[2:]
    B, k = indices.shape
    crow = torch.arange(0, B * k + 1, k, device=indices.device, dtype=torch.int64)
    g = None if grad_values is None else grad_values.reshape(-1)
    return _input_grads(ctx, g, values.reshape(-1) if ctx.relu else None, crow, indices.reshape(-1)) + (None, None)


topk_encode.register_autograd(_backward, setup_context=_setup)


def _batch_setup(ctx, inputs, output):
    x, weight, bias, k, relu = inputs
    values, rows, cols = output
    ctx.has_bias, ctx.relu = bias is not None, relu
    ctx.save_for_backward(x, weight, values, rows, cols)
    ctx.mark_non_differentiable(rows, cols)


def _batch_backward(ctx, grad_values, _grad_rows, _grad_cols):
    x, _, values, rows, cols = ctx.saved_tensors
    bounds = torch.arange(x.shape[0] + 1, device=rows.device, dtype=rows.dtype)
    crow = torch.searchsorted(rows, bounds)                            # rows are sorted
    return _input_grads(ctx, grad_values, values if ctx.relu else None, crow, cols) + (None, None)


batch_topk_encode.register_autograd(_batch_backward, setup_context=_batch_setup)
