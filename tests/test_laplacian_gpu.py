"""laplacian: every CUDA backend (conftest.GPU_BACKENDS) against the reference, on a GPU (moved from
tests/test_laplacian.py, whose helpers it uses). Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

import pyaeplus
from pyaeplus import backends
from pyaeplus.reference import laplacian as ref
from conftest import GPU_BACKENDS, use_backend
from test_laplacian import NORMS, REDS, TOL, random_graph

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("reduction", REDS)
def test_use_backends(backend, dtype, normalization, reduction):
    use_backend(backend)  # skips (fails under gpu_check.sh) when it cannot run here
    cpu_graph = random_graph(1031, 9, symmetric=False, zero_rows=3)
    g = cpu_graph.to("cuda")
    atol, rtol = TOL[dtype]
    for d in (7, 64, 300):
        z = torch.randn(1031, d, device="cuda").to(dtype).requires_grad_()
        with backends.use(backend):
            out = pyaeplus.laplacian_loss(z, g, normalization=normalization, reduction=reduction)
            go = torch.randn(out.shape, dtype=out.dtype, device="cuda") * 2.3
            (gz,) = torch.autograd.grad(out, z, go)
        zr = z.detach().cpu().double().requires_grad_()
        rr = ref.laplacian_loss(zr, cpu_graph.indptr, cpu_graph.indices, cpu_graph.weights, normalization, reduction)
        (gr,) = torch.autograd.grad(rr, zr, go.cpu().double())
        scale_l = rr.detach().abs().max().item()
        torch.testing.assert_close(out.detach().cpu().double(), rr.detach(), atol=atol * max(scale_l, 1.0), rtol=rtol * 4)
        scale = gr.abs().max().item()
        torch.testing.assert_close(gz.cpu().double(), gr, atol=atol * max(scale, 1.0) * 4, rtol=rtol * 4)


def test_gpu_large_and_graph_on_wrong_device():
    g = random_graph(200003, 10, symmetric=True)
    z = torch.randn(200003, 64, device="cuda", requires_grad=True)
    with pytest.raises(ValueError, match="graph is on cpu"):
        pyaeplus.laplacian_loss(z, g)
    gc = g.to("cuda")
    outs = {}
    for be in [b for b in ("triton", "cuda") if backends.available()[b]]:
        with backends.use(be):
            out = pyaeplus.laplacian_loss(z, gc, normalization="sym")
            (gz,) = torch.autograd.grad(out, z)
        outs[be] = (out, gz)
    ref_out = pyaeplus.laplacian_loss(z.detach().cpu(), g, normalization="sym")
    for be, (out, gz) in outs.items():
        torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-3)
    if len(outs) == 2:
        torch.testing.assert_close(outs["triton"][1], outs["cuda"][1], rtol=1e-4, atol=1e-5)
