"""The sparse_decode Triton launchers, called directly on CPU tensors under TRITON_INTERPRET=1
(small shapes: the interpreter is slow), against the reference."""

from __future__ import annotations

import pytest
import torch

from pyaeplus.reference import sparse_decode as ref
from conftest import TOL

pytestmark = pytest.mark.interpret

SHAPES = [(1, 1, 1, 1), (3, 7, 5, 33), (17, 50, 7, 20), (4, 60, 19, 130)]  # (B, D, k, N), N > BLOCK_N once


def _kernels():
    from pyaeplus.kernels import sparse_decode as m

    return m


def _make(B, D, k, N, dtype, index_dtype=torch.int64):
    values = torch.randn(B, k).to(dtype)
    indices = torch.randint(0, D, (B, k)).to(index_dtype)
    weight = (torch.randn(D, N) / k ** 0.5).to(dtype)
    bias = torch.randn(N).to(dtype)
    grad_out = torch.randn(B, N).to(dtype)
    return values, indices, weight, bias, grad_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,D,k,N", SHAPES)
def test_triton_kernels_match_reference(B, D, k, N, dtype):
    m = _kernels()
    values, indices, weight, bias, grad_out = _make(B, D, k, N, dtype)
    atol, rtol = TOL[dtype]
    out = m.sparse_decode_forward(values, indices, weight, bias)
    torch.testing.assert_close(out, ref.sparse_decode(values, indices, weight, bias), atol=atol, rtol=rtol)
    out_nb = m.sparse_decode_forward(values, indices, weight, None)
    torch.testing.assert_close(out_nb, ref.sparse_decode(values, indices, weight, None), atol=atol, rtol=rtol)
    gv = m.sparse_decode_grad_values(grad_out, indices, weight)
    torch.testing.assert_close(gv, ref.sparse_decode_grad_values(grad_out, indices, weight),
                               atol=atol * N ** 0.5, rtol=rtol)
    order, indptr = ref.sparse_decode_reverse_index(indices, D)
    gw = m.sparse_decode_grad_weight(grad_out, values, indices, order, indptr, D)
    hits = int(torch.bincount(indices.reshape(-1), minlength=D).max())
    torch.testing.assert_close(gw, ref.sparse_decode_grad_weight(grad_out, values, indices, weight),
                               atol=atol * hits ** 0.5, rtol=rtol)


def test_triton_int32_indices_and_untouched_rows_zero():
    m = _kernels()
    values, indices, weight, bias, grad_out = _make(6, 40, 3, 9, torch.float32, torch.int32)
    torch.testing.assert_close(m.sparse_decode_forward(values, indices, weight, bias),
                               ref.sparse_decode(values, indices, weight, bias))
    torch.testing.assert_close(m.sparse_decode_grad_values(grad_out, indices, weight),
                               ref.sparse_decode_grad_values(grad_out, indices, weight))
    order, indptr = ref.sparse_decode_reverse_index(indices, 40)
    gw = m.sparse_decode_grad_weight(grad_out, values, indices, order, indptr, 40)
    torch.testing.assert_close(gw, ref.sparse_decode_grad_weight(grad_out, values, indices, weight))
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[indices.reshape(-1).long()] = False
    assert untouched.any() and (gw[untouched] == 0).all()


def test_triton_masks_out_of_range_indices():
    # The public function rejects them; the kernel must still never read out of bounds.
    m = _kernels()
    values, indices, weight, bias, _ = _make(2, 5, 3, 4, torch.float32)
    bad = indices.clone()
    bad[0, 1] = 99
    bad[1, 0] = -3
    kept = values.clone()
    kept[0, 1] = 0
    kept[1, 0] = 0
    torch.testing.assert_close(m.sparse_decode_forward(values, bad, weight, bias),
                               ref.sparse_decode(kept, bad.clamp(0, 4), weight, bias))
