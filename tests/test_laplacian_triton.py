"""The Triton Laplacian kernel under the interpreter (CPU tensors), against the reference
statement of the fused kernel and against the public loss's reference."""

from __future__ import annotations

import pytest
import torch

from pyaeplus.graph import Graph
from pyaeplus.reference import laplacian as ref

pytestmark = pytest.mark.interpret

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (1.6e-2, 1.6e-2)}


def _kernels():
    from pyaeplus.kernels import laplacian as k

    return k


def _graph(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(n).repeat_interleave(k)
    dst = torch.randint(0, n, (n * k,), generator=g)
    return Graph.from_edges(src, dst, torch.rand(n * k, generator=g) + 0.1, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalization", [None, "sym", "rw"])
def test_fused_rows_and_grad(dtype, normalization):
    n, d = 11, 13
    g = _graph(n, 5)  # rows of S hold up to ~10+ entries: more than one BLOCK_E block for some
    ip, ix, w, s = g._grad_csr(normalization)
    z = torch.randn(n, d).to(dtype)
    rows, grad = _kernels().laplacian_rows_grad(z, ip, ix, w, s, None, 0.37, True, True)
    er, eg = ref.laplacian_rows_grad(z, ip, ix, w, s, None, 0.37, True, True)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(rows, er, atol=atol * 10, rtol=rtol)
    torch.testing.assert_close(grad.float(), eg.float(), atol=atol * 10, rtol=rtol * 2)
    # the per-row sum is the public loss
    lr = ref.laplacian_loss(z.to(torch.float64), g.indptr, g.indices, g.weights, normalization, "sum")
    torch.testing.assert_close(rows.double().sum(), lr, atol=1e-2 if dtype in (torch.float16, torch.bfloat16)
                               else 1e-4, rtol=2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5)


def test_row_weights_wide_d_and_stride():
    n, d = 9, 150  # d > BLOCK_D: two d-chunks
    g = _graph(n, 3, seed=1)
    ip, ix, w, s = g._grad_csr("sym")
    base = torch.randn(n, d + 7)
    z = base[:, :d]  # row stride d + 7
    gw = torch.randn(n)
    rows, grad = _kernels().laplacian_rows_grad(z, ip, ix, w, s, gw, 1.0, False, True)
    er, eg = ref.laplacian_rows_grad(z, ip, ix, w, s, gw, 1.0, False, True)
    assert rows.numel() == 0 and er.numel() == 0
    torch.testing.assert_close(grad, eg, atol=1e-5, rtol=1e-5)


def test_rows_only_and_isolated_rows():
    # node 0 has no edges at all
    ip = torch.tensor([0, 0, 2, 3, 4])
    ix = torch.tensor([2, 3, 1, 1])
    g = Graph(ip, ix, torch.tensor([1.0, 2.0, 0.5, 0.25]))
    a, b, w, s = g._grad_csr(None)
    z = torch.randn(4, 5, dtype=torch.float64)
    rows, grad = _kernels().laplacian_rows_grad(z, a, b, w, s, None, 1.0, True, False)
    er, _ = ref.laplacian_rows_grad(z, a, b, w, s, None, 1.0, True, False)
    assert grad.shape == (0, 5)
    assert rows[0].item() == 0.0
    torch.testing.assert_close(rows, er, atol=1e-12, rtol=1e-12)
