"""Every op through its public API x backend x dtype (float32, float16, bfloat16) at an odd and a
large shape, against ``pyaeplus/reference`` evaluated in float64 on the same (rounded) inputs:
outputs and every gradient, with the loss not last.

On CUDA the backends are ``triton``, ``cuda`` and ``auto`` (those cases are marked ``gpu``: they run on
the H200 through ``benchmarks/gpu_check.sh quick``). On the CPU the same checks run with ``cpu`` and
``auto`` on small shapes: they keep this file working in CI and rehearse the GPU half (the
``--dry-run`` of gpu_check.sh). A compiled backend that is missing skips, unless
``PYAEPLUS_GPU_CHECK=1`` (set by gpu_check.sh), where it fails: there the build must have made it."""

from __future__ import annotations

import pytest
import torch

import pyaeplus
from pyaeplus import backends
from pyaeplus.graph import Graph, knn_graph
from pyaeplus.reference import laplacian as lap_ref
from pyaeplus.reference import sparse_decode as sd_ref
from pyaeplus.reference import ssim as ssim_ref
from pyaeplus.reference import topk as topk_ref
from conftest import use_backend

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# max |out - ref| / max |ref| per storage dtype: outputs and gradients are rounded to it once after
# float32 accumulation (2^-11 and 2^-8 relative), plus the accumulation's own error.
TOL = {torch.float32: 3e-5, torch.float16: 3e-3, torch.bfloat16: 2.4e-2}
# On CPU tensors "auto" is "cpu" (the C++ kernels): one case is enough there.
CASES = [pytest.param("cpu", "cpu", id="cpu-cpu")] + [
    pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.gpu) for b in ("triton", "cuda", "auto")]
SIZES = ["odd", "large"]

# (odd, large) shapes per device; CPU "large" stays small enough for CI.
SHAPES = {
    "ssim": {"cuda": [(2, 3, 67, 101), (3, 3, 1031, 1543)], "cpu": [(2, 3, 27, 35), (1, 2, 67, 53)]},
    "ms_ssim": {"cuda": [(2, 3, 181, 203), (2, 3, 517, 771)], "cpu": [(1, 1, 163, 167), (2, 1, 171, 177)]},
    "topk": {"cuda": [(3, 13, 1001, 9), (1029, 32771, 33)], "cpu": [(3, 5, 301, 7), (33, 2053, 17)]},
    "sparse_decode": {"cuda": [(37, 1001, 7, 33), (4099, 65537, 32, 769)],
                      "cpu": [(37, 1001, 7, 33), (129, 2053, 16, 65)]},
    "laplacian": {"cuda": [(1031, 7, 9), (300007, 64, 10)], "cpu": [(517, 7, 9), (2053, 33, 10)]},
    "knn": {"cuda": [(3001, 37), (65537, 128)], "cpu": [(601, 13), (1031, 37)]},
}


def _shape(op: str, device: str, size: str):
    return SHAPES[op][device][SIZES.index(size)]


def _use(device: str, backend: str):
    """The backend context; skip (fail under gpu_check.sh) when it cannot run here."""
    return use_backend(backend, device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape and torch.isfinite(a).all(), (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _close(name: str, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, factor: float = 1.0,
           atol: float = 0.0) -> None:
    err = _rel(a, b)
    bound = TOL[dtype] * factor + atol / b.detach().abs().max().clamp_min(1e-30).item()
    assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g}"


def _images(shape, dtype, device):
    x = torch.rand(shape, device=device)
    y = (x + 0.15 * torch.randn(shape, device=device)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


# ---- SSIM / MS-SSIM --------------------------------------------------------------------------

def _ssim_ref64(x64, y64):
    C = x64.shape[1]
    win = ssim_ref.gaussian_window(11, 1.5).to(x64).repeat(C, 1, 1, 1)  # pytorch-msssim's (C, 1, 1, K)
    s, _, _ = ssim_ref.ssim_general(x64, y64, win, 0.01 ** 2, 0.03 ** 2, 0, (False, False))
    return s.mean(1)


def _image_loss_and_grads(fn, x, y, g, ctx):
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    with ctx, pyaeplus.config.checks(False):
        out = fn(xg, yg)
        gx, gy = torch.autograd.grad(out, (xg, yg), g.to(out.dtype))
    return out, gx, gy


def _check_image_loss(fn, ref_fn, device, backend, dtype, shape, lowp_ref=False):
    """``fn`` on ``backend`` against ``ref_fn`` in float64. ``lowp_ref``: the bound is the larger of
    TOL and twice the error of the reference pipeline itself run in ``dtype`` (backend "torch")."""
    x, y = _images(shape, dtype, device)
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    ref = ref_fn(x64, y64)
    g0 = torch.rand(ref.shape, device=device, dtype=torch.float64) + 0.5  # loss not last
    rx, ry = torch.autograd.grad(ref, (x64, y64), g0)
    # Scale the loss so that the gradients are O(1), as a GradScaler would; float16 caps the scale
    # (the output gradient is float16 too), and what still falls below its normal range (2^-14) is
    # rounded to the subnormal spacing 2^-24: a few of those are allowed on top of the tolerance.
    scale = 1 / max(rx.abs().max().item(), ry.abs().max().item(), 1e-30)
    if dtype == torch.float16:
        scale = min(scale, 3e4 / g0.max().item())
    refs = (ref, rx * scale, ry * scale)
    got = _image_loss_and_grads(fn, x, y, g0 * scale, _use(device, backend))
    assert got[0].dtype == dtype and got[0].shape == ref.shape and got[1].dtype == dtype
    factors = [1.0] * 3
    if lowp_ref and dtype != torch.float32:
        base = _image_loss_and_grads(fn, x, y, g0 * scale, backends.use("torch"))
        factors = [max(1.0, 2 * _rel(b, r) / TOL[dtype]) for b, r in zip(base, refs)]
    sub = 8 * 2.0 ** -24 if dtype == torch.float16 else 0.0
    for name, a, b, f, atol in zip(("value", "grad X", "grad Y"), got, refs, factors, (0.0, sub, sub)):
        _close(name, a, b, dtype, f, atol)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_ssim(device, backend, dtype, size):
    _check_image_loss(lambda a, b: pyaeplus.ssim(a, b, data_range=1.0, size_average=False), _ssim_ref64,
                      device, backend, dtype, _shape("ssim", device, size))


def _ms_ssim_ref64(x64, y64):
    # The same pipeline on the float64 reference kernels (pyaeplus/reference through backend "torch").
    with backends.use("torch"):
        return pyaeplus.ms_ssim(x64, y64, data_range=1.0, size_average=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_ms_ssim(device, backend, dtype, size):
    # Every level's 2x2 pooling rounds the images (and the backward its gradients) to the storage
    # dtype again: in float16/bfloat16 the bound is twice the reference pipeline's own error there.
    _check_image_loss(lambda a, b: pyaeplus.ms_ssim(a, b, data_range=1.0, size_average=False), _ms_ssim_ref64,
                      device, backend, dtype, _shape("ms_ssim", device, size), lowp_ref=True)


# ---- top-k -------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_topk_activation(device, backend, dtype, size):
    *lead, D, k = _shape("topk", device, size)
    x = torch.randn(*lead, D, device=device).to(dtype)  # low-precision randn: many ties, lowest index wins
    g = torch.randn_like(x)
    with _use(device, backend), pyaeplus.config.checks(False):
        for relu in (False, True):
            xg = x.clone().requires_grad_()
            y = pyaeplus.topk_activation(xg, k, relu=relu)
            (gx,) = torch.autograd.grad(y, xg, g)
            xr = x.clone().requires_grad_()
            yr = topk_ref.topk_activation(xr, k, relu=relu)
            (rgx,) = torch.autograd.grad(yr, xr, g)
            assert torch.equal(y, yr) and torch.equal(gx, rgx), relu
            vals, idx = pyaeplus.topk_activation(x, k, relu=relu, output="sparse")
            rv, ri = topk_ref.topk_activation(x, k, relu=relu, output="sparse")
            assert torch.equal(idx, ri) and torch.equal(vals, rv), relu
        x2 = x.reshape(-1, D)
        yb = pyaeplus.topk_activation(x2, k, relu=True, batch=True)
        assert torch.equal(yb, topk_ref.topk_activation(x2, k, relu=True, batch=True))


# ---- sparse decode ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_sparse_decode(device, backend, dtype, size):
    B, D, k, N = _shape("sparse_decode", device, size)
    values = torch.randn(B, k, device=device).to(dtype)
    indices = torch.randint(0, D, (B, k), device=device)  # duplicates allowed: they add
    weight = (torch.randn(D, N, device=device) / k ** 0.5).to(dtype)
    bias = torch.randn(N, device=device).to(dtype)
    g = torch.randn(B, N, device=device).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (values, weight, bias)]
    with _use(device, backend), pyaeplus.config.checks(False):
        out = pyaeplus.sparse_decode(leaves[0], indices, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, leaves, g)
    assert out.dtype == dtype and out.shape == (B, N)
    ref_leaves = [t.double().requires_grad_() for t in (values, weight, bias)]
    ref = sd_ref.sparse_decode(ref_leaves[0], indices, ref_leaves[1], ref_leaves[2])
    ref_grads = torch.autograd.grad(ref, ref_leaves, g.double())
    _close("out", out, ref, dtype)
    for name, a, b in zip(("grad values", "grad weight", "grad bias"), grads, ref_grads):
        _close(name, a, b, dtype)


# ---- Laplacian --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_laplacian_loss(device, backend, dtype, size):
    n, d, k = _shape("laplacian", device, size)
    gen = torch.Generator().manual_seed(n)
    src = torch.arange(n).repeat_interleave(k)
    dst = torch.randint(0, n, (n * k,), generator=gen)
    graph = Graph.from_edges(src, dst, torch.rand(n * k, generator=gen) + 0.05, n, symmetrize="max")
    z = torch.randn(n, d, device=device).to(dtype)
    # odd: unnormalized sum; large: symmetric normalization, mean (stays O(1) at a million edges)
    norm, red = (None, "sum") if size == "odd" else ("sym", "mean")
    zg = z.clone().requires_grad_()
    gd = graph.to(device)
    with _use(device, backend), pyaeplus.config.checks(False):
        out = pyaeplus.laplacian_loss(zg, gd, normalization=norm, reduction=red)
        (gz,) = torch.autograd.grad(out, zg, torch.tensor(-2.5, device=device, dtype=out.dtype))
    assert out.dtype == torch.float32 and gz.dtype == dtype
    z64 = z.double().requires_grad_()  # the reference on the same device (millions of edges)
    ref = lap_ref.laplacian_loss(z64, gd.indptr, gd.indices, gd.weights, norm, red)
    (rgz,) = torch.autograd.grad(ref, z64, torch.tensor(-2.5, dtype=torch.float64, device=device))
    _close("loss", out.reshape(1), ref.reshape(1), torch.float32)  # float32 result of float32 sums
    _close("grad z", gz, rgz, dtype)


# ---- exact k-NN graph -------------------------------------------------------------------------

def _knn_backend(device: str, backend: str) -> str:
    if backend == "cuda":
        pytest.skip("k-NN has no CUDA C++ kernel (backends: triton, torch, faiss)")
    if backend == "cpu":
        pytest.importorskip("faiss")
        return "faiss"
    return backend


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_knn_graph(device, backend, dtype, size):
    be = _knn_backend(device, backend)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    n, d = _shape("knn", device, size)
    x = torch.randn(n, d, device=device).to(dtype)
    x[n - 7] = x[5]  # an exact duplicate: each is the other's nearest neighbour
    got = knn_graph(x, 10, backend=be, progress=False)
    # oracle: the chunked exact torch brute force, in float32 on the rounded inputs
    ref = knn_graph(x.float(), 10, backend="torch", progress=False)
    torch.testing.assert_close(got.distances, ref.distances, atol=1e-5, rtol=1e-5)
    diff = got.indices != ref.indices
    assert diff.float().mean() < 1e-3  # GPU and CPU sums may differ in the last bit at near-ties
    assert torch.allclose(got.distances[diff], ref.distances[diff], atol=1e-5, rtol=1e-5)
    assert got.indices[5, 0] == n - 7 and got.indices[n - 7, 0] == 5
