"""The topk_encode Triton launchers (the backward kernels; the forward is cuBLAS + the top-k Triton
launcher, tested in test_topk_triton.py), called directly on CPU tensors under TRITON_INTERPRET=1
(small shapes: the interpreter is slow), against the reference."""

from __future__ import annotations

import pytest
import torch

from pyaeplus.ops.topk_encode import _reverse_index
from pyaeplus.reference import topk_encode as ref
from conftest import TOL

pytestmark = pytest.mark.interpret


def _kernels():
    from pyaeplus.kernels import topk_encode as m

    return m


def _entries(B, D, counts, dtype):
    """CSR by batch row with ``counts[b]`` entries in row b (distinct latents), random gradients."""
    crow = torch.tensor([0] + list(counts)).cumsum(0)
    cols = torch.cat([torch.randperm(D)[:c] for c in counts]) if sum(counts) else torch.zeros(0, dtype=torch.int64)
    grad = torch.randn(int(crow[-1])).to(dtype)
    return grad, crow, cols


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B,N,D,counts", [(1, 1, 1, [1]), (3, 7, 5, [5, 5, 5]), (6, 20, 40, [3, 0, 7, 1, 17, 2]),
                                          (4, 130, 60, [19, 19, 19, 19])])   # N > BLOCK_N once; rows of any size
def test_triton_backward_kernels_match_reference(B, N, D, counts, dtype):
    m = _kernels()
    grad, crow, cols = _entries(B, D, counts, dtype)
    x = torch.randn(B, N).to(dtype)
    w = torch.randn(D, N).to(dtype)
    atol, rtol = TOL[dtype]
    gx = m.grad_input(grad, crow, cols, w)
    torch.testing.assert_close(gx, ref.grad_input(grad, crow, cols, w), atol=atol * max(counts) ** 0.5, rtol=rtol)
    gw, gb = m.grad_weight(*_reverse_index(grad, crow, cols, D), x)
    rgw, rgb = ref.grad_weight(grad, crow, cols, x, D)
    hits = max(1, int(torch.bincount(cols, minlength=D).max()))
    torch.testing.assert_close(gw, rgw, atol=atol * hits ** 0.5, rtol=rtol)
    torch.testing.assert_close(gb, rgb, atol=atol * hits ** 0.5, rtol=rtol)
    untouched = torch.ones(D, dtype=torch.bool)
    untouched[cols] = False
    assert (gw[untouched] == 0).all() and (gb[untouched] == 0).all()


def test_triton_kernels_mask_bad_entries():
    # The ops reject these; called directly, the kernels must still stay in bounds.
    m = _kernels()
    grad, crow, cols = _entries(3, 10, [2, 2, 2], torch.float32)
    w, x = torch.randn(10, 5), torch.randn(3, 5)
    bad = cols.clone()
    bad[1], bad[4] = 99, -3
    kept = grad.clone()
    kept[1] = kept[4] = 0
    torch.testing.assert_close(m.grad_input(grad, crow, bad, w), ref.grad_input(kept, crow, bad.clamp(0, 9), w))
    long_crow = torch.tensor([0, 2, 4, 1000])                 # past the end of the entries
    torch.testing.assert_close(m.grad_input(grad, long_crow, cols, w), ref.grad_input(grad, crow, cols, w))
    sg, sr, indptr = _reverse_index(grad, crow, cols, 10)
    sr = sr.clone()
    sr[0] = 7                                                 # a batch row that does not exist
    gw, gb = m.grad_weight(sg, sr, indptr, x)
    assert torch.isfinite(gw).all() and torch.isfinite(gb).all()
