"""Graph-Laplacian regularizer: fused CPU kernel vs the reference and a dense-matrix formula,
gradients (float64 gradcheck, grad_output != 1), opcheck, torch.compile, bad input."""

from __future__ import annotations

import pytest
import torch

import pyaeplus
from pyaeplus import backends
from pyaeplus.graph import Graph
from pyaeplus.reference import laplacian as ref

# (atol, rtol) vs the float64 dense formula; the graph weights are float32 (the Graph
# contract), so even float64 latents agree only to float32 precision of the weights.
TOL = {
    torch.float64: (1e-6, 2e-6),
    torch.float32: (1e-4, 2e-5),
    torch.float16: (2e-2, 5e-3),
    torch.bfloat16: (1e-1, 2e-2),
}
NORMS = [None, "sym", "rw"]
REDS = ["sum", "mean", "none"]


def random_graph(n: int, k: int, symmetric: bool, zero_rows: int = 0, seed: int = 0) -> Graph:
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(n).repeat_interleave(k)
    dst = torch.randint(0, n, (n * k,), generator=g)
    w = torch.rand(n * k, generator=g) + 0.05
    if zero_rows:  # isolated nodes: no edge in or out
        iso = torch.arange(zero_rows)
        keep = ~(torch.isin(src, iso) | torch.isin(dst, iso))
        src, dst, w = src[keep], dst[keep], w[keep]
    return Graph.from_edges(src, dst, w, n, symmetrize="mean" if symmetric else None)


def dense_loss(z: torch.Tensor, g: Graph, normalization, reduction) -> torch.Tensor:
    """The dense-matrix statement: L = tr(Yᵀ (D_out + D_in - W - Wᵀ) Y) with W (normalized)."""
    z = z.double()
    w = g.to_dense().double()
    d = w.sum(1)
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    y = z
    if normalization == "rw":
        w = w * inv[:, None]
    if normalization == "sym":
        y = z * inv.sqrt()[:, None]
    lap = torch.diag(w.sum(1) + w.sum(0)) - w - w.T
    if reduction == "none":
        # each edge term split between its endpoints: node i gets 1/2 (out-row i + in-column i)
        sq = (y[:, None, :] - y[None, :, :]).pow(2).sum(-1)
        t = w * sq
        return 0.5 * (t.sum(1) + t.sum(0))
    total = torch.einsum("nd,nm,md->", y, lap, y)
    return total / max(g.nnz, 1) if reduction == "mean" else total


@pytest.mark.parametrize("dtype,symmetric", [(torch.float32, True), (torch.float32, False), (torch.float64, True),
                                             (torch.float64, False), (torch.float16, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("reduction", REDS)
def test_matches_dense_and_reference(dtype, symmetric, normalization, reduction):
    n, d = 53, 19
    g = random_graph(n, 6, symmetric, zero_rows=2)
    z = torch.randn(n, d).to(dtype).requires_grad_()
    out = pyaeplus.laplacian_loss(z, g, normalization=normalization, reduction=reduction)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == ((n,) if reduction == "none" else ())
    expect = dense_loss(z.detach(), g, normalization, reduction)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), expect, atol=atol * 100 if reduction != "none" else atol, rtol=rtol)

    # gradient with grad_output != 1 (the loss is not last), vs the float64 reference
    go = torch.randn(out.shape, dtype=out.dtype) * 3.7
    (gz,) = torch.autograd.grad(out, z, go)
    zr = z.detach().double().requires_grad_()
    rr = ref.laplacian_loss(zr, g.indptr, g.indices, g.weights, normalization, reduction)
    (gr,) = torch.autograd.grad(rr, zr, go.double())
    assert gz.dtype == dtype and gz.shape == z.shape
    scale = gr.abs().max().item()
    torch.testing.assert_close(gz.double(), gr, atol=atol * max(scale, 1.0) * 4, rtol=rtol * 4)


@pytest.mark.parametrize("normalization", NORMS)
def test_torch_backend_matches_cpu(normalization):
    g = random_graph(41, 5, symmetric=False)
    z = torch.randn(41, 7, requires_grad=True)
    a = pyaeplus.laplacian_loss(z, g, normalization=normalization)
    (ga,) = torch.autograd.grad(a * 2.5, z)
    with backends.use("torch"):
        b = pyaeplus.laplacian_loss(z, g, normalization=normalization)
        (gb,) = torch.autograd.grad(b * 2.5, z)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("reduction", REDS)
def test_gradcheck_float64(normalization, reduction):
    g = random_graph(13, 3, symmetric=False, zero_rows=1)
    z = torch.randn(13, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: pyaeplus.laplacian_loss(t, g, normalization=normalization, reduction=reduction), (z,))


def test_symmetric_equals_twice_trace():
    g = random_graph(30, 4, symmetric=True)
    assert g.is_symmetric()
    z = torch.randn(30, 6, dtype=torch.float64)
    lap = g.laplacian(None).to_dense().double()
    torch.testing.assert_close(pyaeplus.laplacian_loss(z, g), 2 * torch.trace(z.T @ lap @ z), rtol=1e-6, atol=1e-8)
    # normalized Laplacians from Graph.laplacian agree with the loss as well
    zs = pyaeplus.laplacian_loss(z, g, normalization="sym")
    lsym = g.laplacian("sym").to_dense().double()
    torch.testing.assert_close(zs, 2 * torch.trace(z.T @ lsym @ z), rtol=1e-6, atol=1e-8)


def test_no_grad_and_forward_without_saved_gradient():
    g = random_graph(29, 4, symmetric=False)
    z = torch.randn(29, 5, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        a = pyaeplus.laplacian_loss(z, g)
    b = pyaeplus.laplacian_loss(z, g)
    assert torch.equal(a, b)
    # The op called with need_grad=False while z requires grad: backward recomputes.
    ip, ix, w, s = g._grad_csr("sym")
    for red, div in ((1, 1.0), (2, float(g.nnz))):
        loss, saved = torch.ops.pyaeplus.laplacian_loss(z, ip, ix, w, s, red, div, False)
        assert saved.numel() == 0
        (g1,) = torch.autograd.grad(loss * 1.7, z)
        loss2, saved2 = torch.ops.pyaeplus.laplacian_loss(z, ip, ix, w, s, red, div, True)
        assert saved2.shape == z.shape
        (g2,) = torch.autograd.grad(loss2 * 1.7, z)
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_deterministic():
    g = random_graph(300, 8, symmetric=True)
    z = torch.randn(300, 33, requires_grad=True)
    a = pyaeplus.laplacian_loss(z, g)
    (ga,) = torch.autograd.grad(a, z)
    for _ in range(3):
        b = pyaeplus.laplacian_loss(z, g)
        (gb,) = torch.autograd.grad(b, z)
        assert torch.equal(a, b) and torch.equal(ga, gb)


def test_non_contiguous_and_large_d():
    g = random_graph(23, 4, symmetric=False)
    base = torch.randn(23, 300)
    z = base[:, ::2].requires_grad_()  # (23, 150) with a column stride of 2
    out = pyaeplus.laplacian_loss(z, g, normalization="sym")
    torch.testing.assert_close(out.double(), dense_loss(z.detach(), g, "sym", "sum"), rtol=2e-5, atol=1e-4)
    (gz,) = torch.autograd.grad(out, z)
    zr = z.detach().double().requires_grad_()
    (gr,) = torch.autograd.grad(ref.laplacian_loss(zr, g.indptr, g.indices, g.weights, "sym", "sum"), zr)
    torch.testing.assert_close(gz.double(), gr, rtol=1e-4, atol=1e-5)


def test_empty_graph_and_isolated_nodes():
    g = Graph(torch.zeros(8, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    z = torch.randn(7, 3, requires_grad=True)
    for norm in NORMS:
        out = pyaeplus.laplacian_loss(z, g, normalization=norm, reduction="mean")
        assert out.item() == 0.0
        (gz,) = torch.autograd.grad(out, z)
        assert torch.count_nonzero(gz) == 0


@pytest.mark.parametrize("normalization,reduction", [(None, "sum"), ("sym", "none")])
def test_opcheck(normalization, reduction):
    g = random_graph(17, 3, symmetric=False)
    ip, ix, w, s = g._grad_csr(normalization)
    red = {"sum": 1, "none": 0}[reduction]
    z = torch.randn(17, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.pyaeplus.laplacian_loss.default, (z, ip, ix, w, s, red, 1.0, True))
    torch.library.opcheck(torch.ops.pyaeplus.laplacian_loss.default, (z, ip, ix, w, s, 2, 9.0, False))
    saved = torch.randn(17, 5) if red else torch.empty(0, 5)
    go = torch.randn(()) if red else torch.randn(17)
    torch.library.opcheck(torch.ops.pyaeplus._laplacian_loss_backward.default,
                          (go, z.detach(), ip, ix, w, s, saved, red, 1.0))


def test_torch_compile_fullgraph():
    g = random_graph(31, 4, symmetric=True).prepare("sym")
    lin = torch.nn.Linear(9, 6)

    def step(x):
        z = lin(x)
        return pyaeplus.laplacian_loss(z, g, normalization="sym") * 0.3 + z.pow(2).mean()

    x = torch.randn(31, 9)
    eager = step(x)
    ge = torch.autograd.grad(eager, lin.weight)[0]
    comp = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = comp(x)
    gc = torch.autograd.grad(out, lin.weight)[0]
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gc, ge)


def test_module():
    g = random_graph(19, 3, symmetric=True)
    z = torch.randn(19, 4, requires_grad=True)
    m = pyaeplus.nn.LaplacianRegularizer(lam=0.25, normalization="rw", reduction="mean")
    torch.testing.assert_close(m(z, g), 0.25 * pyaeplus.laplacian_loss(z, g, normalization="rw", reduction="mean"))
    assert "rw" in repr(m)
    with pytest.raises(ValueError, match="lam"):
        pyaeplus.nn.LaplacianRegularizer(lam=-1.0)
    with pytest.raises(ValueError, match="normalization"):
        pyaeplus.nn.LaplacianRegularizer(lam=1.0, normalization="l2")


def test_bad_input():
    g = random_graph(10, 3, symmetric=False)
    z = torch.randn(10, 4)
    with pytest.raises(ValueError, match="z"):
        pyaeplus.laplacian_loss(torch.randn(10), g)
    with pytest.raises(TypeError, match="z"):
        pyaeplus.laplacian_loss(torch.randint(0, 3, (10, 4)), g)
    with pytest.raises(ValueError, match="z"):
        pyaeplus.laplacian_loss(torch.randn(0, 4), g)
    bad = z.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="z contains 1 NaN"):
        pyaeplus.laplacian_loss(bad, g, check_finite=True)
    assert torch.isnan(pyaeplus.laplacian_loss(bad, g))       # default "auto": NaN reaches the loss
    bad[3, 1] = float("inf")
    with pyaeplus.config.checks(True), pytest.raises(ValueError, match="Inf"):
        pyaeplus.laplacian_loss(bad, g)
    with pytest.raises(ValueError, match="graph has 10 nodes"):
        pyaeplus.laplacian_loss(torch.randn(11, 4), g)
    with pytest.raises(TypeError, match="graph"):
        pyaeplus.laplacian_loss(z, (g.indptr, g.indices, g.weights))
    with pytest.raises(ValueError, match="graph is on meta"):
        pyaeplus.laplacian_loss(z, g.to("meta"))
    with pytest.raises(ValueError, match="normalization"):
        pyaeplus.laplacian_loss(z, g, normalization="both")
    with pytest.raises(ValueError, match="reduction"):
        pyaeplus.laplacian_loss(z, g, reduction="max")


def test_bad_graph():
    ip = torch.tensor([0, 2, 3, 3])
    ix = torch.tensor([1, 2, 0])
    w = torch.tensor([1.0, 0.5, 2.0])
    Graph(ip, ix, w)  # valid
    with pytest.raises(ValueError, match="weights must be >= 0"):
        Graph(ip, ix, torch.tensor([1.0, -0.5, 2.0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        Graph(ip, ix, torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        Graph(ip, ix, torch.tensor([1.0, float("inf"), 2.0]))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
        Graph(ip, torch.tensor([1, 3, 0]), w)
    with pytest.raises(ValueError, match="num_nodes=4"):
        Graph(ip, ix, w, num_nodes=4)
    with pytest.raises(ValueError, match="end at nnz"):
        Graph(torch.tensor([0, 2, 3, 4]), ix, w)
    with pytest.raises(ValueError, match="non-decreasing"):
        Graph(torch.tensor([0, 2, 1, 3]), ix, w)
    with pytest.raises(TypeError, match="indices must be int64"):
        Graph(ip, ix.float(), w)
    with pytest.raises(ValueError, match="weights must have shape"):
        Graph(ip, ix, torch.ones(4))
    with pytest.raises(TypeError, match="weights must be floating"):
        Graph(ip, ix, torch.ones(3, dtype=torch.int64))
