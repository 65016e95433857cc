"""SSIM / MS-SSIM: C++ CPU kernels and the torch backend against the reference (and autograd
through it), drop-in parity with pytorch-msssim, kornia and torchmetrics, gradients, opcheck,
torch.compile, and bad input."""

from __future__ import annotations

import pytest
import torch

import pyaeplus
from pyaeplus import backends
from pyaeplus.ops import ssim as ops
from pyaeplus.reference import ssim as ref

PADS = {"valid": 0, "same": 1, "reflect": 2, "replicate": 3, "circular": 4}
# Tolerances on per-pixel quantities (mean SSIM, map, gradients scaled per pixel). Low-precision
# inputs are compared with the reference run on the same (rounded) values in float32, so only
# the float32 accumulation order differs.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}

needs_cpu_ext = pytest.mark.skipif(not backends.available()["cpu"], reason="pyaeplus._C is not built")


def _pair(shape, dtype=torch.float32, noise=0.15):
    x = torch.rand(shape, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def _window(K, dtype, kind="gaussian", sigma=1.5):
    w = ref.gaussian_window(K, sigma) if kind == "gaussian" else ref.uniform_window(K)
    return w.to(torch.float64 if dtype == torch.float64 else torch.float32)


def _autograd_grads(x, y, w, c1, c2, pad, gs, gc, gl, gm):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xr = x.to(acc).requires_grad_(True)
    yr = y.to(acc).requires_grad_(True)
    sm, cs = ref.ssim_maps(xr, yr, w, c1, c2, pad)
    loss = (sm * (gs[:, :, None, None] + (0 if gm is None else gm))).sum() + (cs.sum((2, 3)) * gc).sum() \
        + ((xr - yr).abs().sum((2, 3)) * gl).sum()
    return torch.autograd.grad(loss, (xr, yr))


# ---- kernels vs reference -----------------------------------------------------------------

CASES = [  # (N, C, H, W, K, sigma, window kind)
    (2, 3, 11, 12, 11, 1.5, "gaussian"),
    (1, 1, 37, 64, 7, 1.0, "gaussian"),
    (2, 5, 12, 37, 3, 0.8, "uniform"),
    (1, 2, 64, 37, 15, 2.5, "gaussian"),
    (1, 1, 257, 11, 11, 1.5, "uniform"),
]


# float32 on every case and padding; the other dtypes on a subset (same code path, other loads).
MATRIX = [(torch.float32, p, c) for p in PADS for c in CASES] \
    + [(torch.float64, p, c) for p in PADS for c in CASES[:2]] \
    + [(d, p, c) for d in (torch.float16, torch.bfloat16) for p in ("valid", "reflect") for c in CASES[1:3]]


@needs_cpu_ext
@pytest.mark.parametrize("dtype,pad,case", MATRIX,
                         ids=lambda v: str(v)[6:] if isinstance(v, torch.dtype) else
                         ("x".join(map(str, v[:5])) + v[6][0] if isinstance(v, tuple) else v))
def test_cpu_forward_backward_vs_reference(dtype, pad, case):
    N, C, H, W, K, sigma, kind = case
    x, y = _pair((N, C, H, W), dtype)
    w = _window(K, dtype, kind, sigma)
    c1, c2, p = 1e-4, 9e-4, PADS[pad]
    with backends.use("cpu"):
        s, cs, l1, m = ops.ssim_stats(x, y, w, c1, c2, p, True)
    rs, rcs, rl1, rm = ref.ssim_stats(x, y, w, c1, c2, p, True)
    Ho, Wo = ops._out_hw(H, W, K, p)
    tol = TOL[dtype]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert s.dtype == acc and s.shape == (N, C) and m.shape == (N, C, Ho, Wo)
    torch.testing.assert_close(s / (Ho * Wo), rs / (Ho * Wo), atol=tol, rtol=0)
    torch.testing.assert_close(cs / (Ho * Wo), rcs / (Ho * Wo), atol=tol, rtol=0)
    torch.testing.assert_close(l1 / (H * W), rl1 / (H * W), atol=tol, rtol=0)
    torch.testing.assert_close(m, rm, atol=10 * tol, rtol=0)

    # Backward with every gradient input non-trivial (not 1, not shared).
    gs, gc, gl = (torch.randn(N, C, dtype=acc) for _ in range(3))
    gm = torch.randn(N, C, Ho, Wo, dtype=acc)
    with backends.use("cpu"):
        dx, dy = ops._ssim_stats_backward(gs, gc, gl, gm, x, y, w, c1, c2, p)
    gx, gy = _autograd_grads(x, y, w, c1, c2, p, gs, gc, gl, gm)
    assert dx.dtype == dtype and dx.shape == x.shape
    gtol = {torch.float64: 1e-9, torch.float32: 2e-3, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    scale = max(gx.abs().max().item(), gy.abs().max().item(), 1.0)
    rt = 0 if dtype in (torch.float64, torch.float32) else {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(dx.to(acc), gx, atol=gtol * scale, rtol=rt)
    torch.testing.assert_close(dy.to(acc), gy, atol=gtol * scale, rtol=rt)


# The CPU kernels' own code paths: rows shorter than a vector (scalar), an overlapping last
# vector, planes split in row bands (one plane, 2+ threads; cross-band folds of circular pads),
# many planes, window lengths with register-resident taps (3..15, symmetric) and the run-time
# loops (K = 17; an asymmetric window, whose backward needs the flipped taps), float64 vectors
# of 4, 16-bit storage, and a gradient map.
PATH_CASES = [  # (N, C, H, W, K, window, dtype)
    (1, 1, 13, 14, 11, "gaussian", torch.float32),     # Wo = 4 (valid): scalar rows
    (1, 1, 301, 19, 11, "gaussian", torch.float32),    # Wo = 9: overlap tail; one plane in bands
    (2, 7, 40, 33, 13, "gaussian", torch.float32),     # many planes
    (1, 2, 160, 45, 17, "gaussian", torch.float32),    # K = 17: run-time loops
    (3, 1, 150, 70, 7, "asymmetric", torch.float32),   # asymmetric taps: run-time loops, flipped
    (1, 1, 140, 37, 15, "gaussian", torch.float64),    # 4 doubles per vector
    (1, 3, 133, 41, 3, "uniform", torch.bfloat16),     # 16-bit storage, K = 3
]


@needs_cpu_ext
@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: "x".join(map(str, c[:5])) + c[5][0] + str(c[6])[-4:])
@pytest.mark.parametrize("pad", list(PADS))
def test_cpu_kernel_paths_vs_reference(case, pad):
    N, C, H, W, K, kind, dtype = case
    x, y = _pair((N, C, H, W), dtype)
    if kind == "asymmetric":
        w = torch.linspace(0.5, 1.5, K) ** 2
        w = (w / w.sum()).to(torch.float32)
    else:
        w = _window(K, dtype, kind)
    w = w.to(torch.float64 if dtype == torch.float64 else torch.float32)
    p = PADS[pad]
    Ho, Wo = ops._out_hw(H, W, K, p)
    acc = w.dtype
    with backends.use("cpu"):
        s, cs, l1, m = ops.ssim_stats(x, y, w, 1e-4, 9e-4, p, True)
    rs, rcs, rl1, rm = ref.ssim_stats(x, y, w, 1e-4, 9e-4, p, True)
    tol = TOL[dtype]
    torch.testing.assert_close(s / (Ho * Wo), rs / (Ho * Wo), atol=tol, rtol=0)
    torch.testing.assert_close(cs / (Ho * Wo), rcs / (Ho * Wo), atol=tol, rtol=0)
    torch.testing.assert_close(l1 / (H * W), rl1 / (H * W), atol=tol, rtol=0)
    torch.testing.assert_close(m, rm, atol=10 * tol, rtol=0)
    gs, gc, gl = (torch.randn(N, C, dtype=acc) for _ in range(3))
    gm = torch.randn(N, C, Ho, Wo, dtype=acc) if N * C > 2 else None
    with backends.use("cpu"):
        dx, dy = ops._ssim_stats_backward(gs, gc, gl, gm, x, y, w, 1e-4, 9e-4, p)
        dx2, dy2 = ops._ssim_stats_backward(gs, gc, gl, gm, x, y, w, 1e-4, 9e-4, p)
    assert torch.equal(dx, dx2) and torch.equal(dy, dy2)  # deterministic (bands, pending rows)
    gx, gy = _autograd_grads(x, y, w, 1e-4, 9e-4, p, gs, gc, gl, gm)
    gtol = {torch.float64: 1e-9, torch.float32: 2e-3, torch.bfloat16: 1e-2}[dtype]
    scale = max(gx.abs().max().item(), gy.abs().max().item(), 1.0)
    rt = 1.6e-2 if dtype == torch.bfloat16 else 0
    torch.testing.assert_close(dx.to(acc), gx, atol=gtol * scale, rtol=rt)
    torch.testing.assert_close(dy.to(acc), gy, atol=gtol * scale, rtol=rt)


@pytest.mark.parametrize("pad", list(PADS))
def test_reference_backward_matches_autograd(pad):
    x, y = _pair((2, 2, 13, 16), torch.float64)
    w = _window(5, torch.float64)
    p = PADS[pad]
    Ho, Wo = ops._out_hw(13, 16, 5, p)
    gs, gc, gl = (torch.randn(2, 2, dtype=torch.float64) for _ in range(3))
    gm = torch.randn(2, 2, Ho, Wo, dtype=torch.float64)
    dx, dy = ref.ssim_stats_backward(gs, gc, gl, gm, x, y, w, 1e-4, 9e-4, p)
    gx, gy = _autograd_grads(x, y, w, 1e-4, 9e-4, p, gs, gc, gl, gm)
    torch.testing.assert_close(dx, gx, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(dy, gy, atol=1e-10, rtol=1e-10)


@needs_cpu_ext
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_cpu_strided_inputs(layout):
    x, y = _pair((2, 3, 21, 26))
    if layout == "channels_last":
        xs, ys = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        xs, ys = x.transpose(2, 3).contiguous().transpose(2, 3), y.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        big_x, big_y = _pair((3, 5, 30, 40))
        big_x[1:3, 1:4, 4:25, 7:33] = x
        big_y[1:3, 1:4, 4:25, 7:33] = y
        xs, ys = big_x[1:3, 1:4, 4:25, 7:33], big_y[1:3, 1:4, 4:25, 7:33]
    assert not xs.is_contiguous()
    w = _window(7, torch.float32)
    g = torch.randn(2, 3)
    with backends.use("cpu"):
        a = ops.ssim_stats(xs, ys, w, 1e-4, 9e-4, 2, True)
        b = ops.ssim_stats(x, y, w, 1e-4, 9e-4, 2, True)
        da = ops._ssim_stats_backward(g, g * 0.5, g * 0.25, None, xs, ys, w, 1e-4, 9e-4, 2)
        db = ops._ssim_stats_backward(g, g * 0.5, g * 0.25, None, x, y, w, 1e-4, 9e-4, 2)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
    for u, v in zip(da, db):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
    if layout == "channels_last":
        assert da[0].is_contiguous(memory_format=torch.channels_last)


def test_torch_backend_matches_cpu():
    x, y = _pair((2, 3, 40, 33))
    outs = {}
    for b in (["torch", "cpu"] if backends.available()["cpu"] else ["torch"]):
        with backends.use(b):
            xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
            v = pyaeplus.l1_ssim_loss(xr, yr, padding="reflect", reduction="none")
            (v * torch.tensor([0.3, -1.7])).sum().backward()
            outs[b] = (v.detach(), xr.grad, yr.grad)
    for u, v in zip(outs["torch"], outs.get("cpu", outs["torch"])):
        torch.testing.assert_close(u, v, atol=2e-5, rtol=1e-4)


# ---- public API: drop-in parity -----------------------------------------------------------



def _msssim():
    return pytest.importorskip("pytorch_msssim")


@pytest.mark.parametrize("data_range,shape", [(255, (4, 3, 64, 57)), (1.0, (3, 1, 28, 28)), (1.0, (2, 5, 37, 12))])
@pytest.mark.parametrize("size_average", [True, False])
def test_ssim_parity_pytorch_msssim(data_range, shape, size_average):
    pm = _msssim()
    x, y = _pair(shape)
    x, y = x * data_range, y * data_range
    for kw in [{}, {"win_size": 7, "win_sigma": 1.0}, {"nonnegative_ssim": True}, {"K": (0.02, 0.05)}]:
        ours = pyaeplus.ssim(x, y, data_range=data_range, size_average=size_average, **kw)
        theirs = pm.ssim(x, y, data_range=data_range, size_average=size_average, **kw)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_ssim_parity_modules_and_win():
    pm = _msssim()
    x, y = _pair((1, 3, 170, 165))
    x, y = x * 255, y * 255
    torch.testing.assert_close(pyaeplus.nn.SSIM()(x, y), pm.SSIM()(x, y), atol=1e-5, rtol=0)
    torch.testing.assert_close(pyaeplus.nn.MS_SSIM()(x, y), pm.MS_SSIM()(x, y), atol=1e-5, rtol=0)
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    win = _fspecial_gauss_1d(9, 2.0).repeat(3, 1, 1, 1)
    torch.testing.assert_close(pyaeplus.ssim(x, y, win=win), pm.ssim(x, y, win=win), atol=1e-5, rtol=0)
    # A window that differs across channels goes through the general path.
    win2 = win.clone()
    win2[1] = _fspecial_gauss_1d(9, 1.0)
    torch.testing.assert_close(pyaeplus.ssim(x, y, win=win2), pm.ssim(x, y, win=win2), atol=1e-5, rtol=0)
    torch.testing.assert_close(pyaeplus.ms_ssim(x, y, win=win2, size_average=False),
                               pm.ms_ssim(x, y, win=win2, size_average=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 161, 177), (1, 1, 176, 200)])
def test_ms_ssim_parity_pytorch_msssim(shape):
    pm = _msssim()
    x, y = _pair(shape)
    for dr, kw in [(1.0, {}), (255, {"weights": [0.5, 0.3, 0.2]}), (1.0, {"win_size": 5, "win_sigma": 1.2})]:
        a = pyaeplus.ms_ssim(x * dr, y * dr, data_range=dr, size_average=False, **kw)
        b = pm.ms_ssim(x * dr, y * dr, data_range=dr, size_average=False, **kw)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_ssim_5d_matches_pytorch_msssim():
    pm = _msssim()
    x, y = _pair((2, 2, 13, 15, 14))
    torch.testing.assert_close(pyaeplus.ssim(x, y, data_range=1.0, win_size=5),
                               pm.ssim(x, y, data_range=1.0, win_size=5), atol=1e-5, rtol=0)
    x1, y1 = x[:, :, :1], y[:, :, :1]  # (N, C, 1, H, W): singleton dropped as pytorch-msssim does
    torch.testing.assert_close(pyaeplus.ssim(x1, y1, data_range=1.0), pm.ssim(x1, y1, data_range=1.0), atol=1e-5,
                               rtol=0)


def test_reflect_parity_kornia_torchmetrics():
    x, y = _pair((2, 3, 37, 41))
    try:
        import kornia
    except ImportError:
        kornia = None
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
    except ImportError:
        tm_ssim = None
    if kornia is None and tm_ssim is None:
        pytest.skip("neither kornia nor torchmetrics is installed")
    if kornia is not None:
        for k in (7, 11):
            torch.testing.assert_close(pyaeplus.ssim_map(x, y, data_range=1.0, win_size=k, padding="reflect"),
                                       kornia.metrics.ssim(x, y, k), atol=1e-5, rtol=0)
    if tm_ssim is not None:
        torch.testing.assert_close(pyaeplus.ssim(x, y, data_range=1.0, padding="reflect"),
                                   tm_ssim(x, y, data_range=1.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(pyaeplus.ssim(x, y, data_range=1.0, padding="reflect", reduction="none"),
                                   tm_ssim(x, y, data_range=1.0, reduction="none"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad", list(PADS))
@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_api_vs_reference_every_padding_and_window(pad, window):
    x, y = _pair((2, 3, 23, 30))
    w = _window(7, torch.float32, window, 1.1)
    sm, _ = ref.ssim_maps(x, y, w, (0.01 * 2) ** 2, (0.03 * 2) ** 2, PADS[pad])
    kw = dict(data_range=2.0, win_size=7, win_sigma=1.1, padding=pad, window=window)
    torch.testing.assert_close(pyaeplus.ssim_map(x, y, **kw), sm, atol=1e-5, rtol=0)
    per = sm.mean((2, 3)).mean(1)
    torch.testing.assert_close(pyaeplus.ssim(x, y, reduction="none", **kw), per, atol=1e-6, rtol=0)
    torch.testing.assert_close(pyaeplus.ssim(x, y, reduction="sum", **kw), per.sum(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pyaeplus.ssim(x, y, **kw), per.mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(pyaeplus.functional.ssim_loss(x, y, **kw), 1 - per.mean(), atol=1e-6, rtol=0)


def test_l1_ssim_loss_formula_and_modules():
    x, y = _pair((3, 2, 30, 31))
    s = pyaeplus.ssim(x, y, data_range=1.0, reduction="none")
    l1 = (x - y).abs().mean((1, 2, 3))
    want = (1 - 0.84) * l1 + 0.84 * (1 - s)
    torch.testing.assert_close(pyaeplus.nn.L1SSIMLoss(reduction="none")(x, y), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(pyaeplus.nn.L1SSIMLoss(alpha=0.3)(x, y), ((1 - 0.3) * l1 + 0.3 * (1 - s)).mean(),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(pyaeplus.nn.SSIMLoss()(x, y), 1 - s.mean(), atol=1e-6, rtol=0)


# ---- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", list(PADS))
def test_gradcheck_float64(pad):
    x, y = _pair((2, 2, 9, 10), torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)

    def f(a, b):
        return (pyaeplus.l1_ssim_loss(a, b, alpha=0.7, win_size=5, padding=pad, reduction="none"),
                pyaeplus.ssim_map(a, b, data_range=1.0, win_size=3, padding=pad))

    assert torch.autograd.gradcheck(f, (x, y), fast_mode=True)


def test_gradcheck_ms_ssim_float64():
    x, y = _pair((1, 2, 35, 38), torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: pyaeplus.ms_ssim(a, b, data_range=1.0, win_size=3, size_average=False), (x, y), fast_mode=True)


def test_loss_not_last_and_grads_for_both():
    x, y = _pair((2, 3, 40, 45))
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = pyaeplus.ssim(xa, ya, data_range=1.0, reduction="none")
    (loss * torch.tensor([2.5, -0.75])).sum().mul(3.0).backward()
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    sm, _ = ref.ssim_maps(xr, yr, _window(11, torch.float32), 1e-4, 9e-4, 0)
    (sm.mean((1, 2, 3)) * torch.tensor([2.5, -0.75])).sum().mul(3.0).backward()
    torch.testing.assert_close(xa.grad, xr.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ya.grad, yr.grad, atol=1e-6, rtol=1e-4)


def test_ms_ssim_gradient_vs_pytorch_msssim():
    pm = _msssim()
    x, y = _pair((2, 1, 170, 165))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (pyaeplus.ms_ssim(xa, y, data_range=1.0) * 1.7).backward()
    (pm.ms_ssim(xb, y, data_range=1.0) * 1.7).backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-7, rtol=1e-3)


@needs_cpu_ext
def test_opcheck():
    x, y = _pair((2, 3, 12, 15))
    w = _window(5, torch.float32)
    for p in (2,):
        for want_map in (False, True):
            torch.library.opcheck(ops.ssim_stats, (x.requires_grad_(True), y.requires_grad_(True), w, 1e-4, 9e-4, p,
                                                   want_map))
        Ho, Wo = ops._out_hw(12, 15, 5, p)
        g = torch.randn(2, 3)
        torch.library.opcheck(ops._ssim_stats_backward, (g, g, g, torch.randn(2, 3, Ho, Wo), x.detach(), y.detach(),
                                                        w, 1e-4, 9e-4, p))
        torch.library.opcheck(ops._ssim_stats_backward, (g, g, g, None, x.detach(), y.detach(), w, 1e-4, 9e-4, p))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_autoencoder_trains_with_ssim_loss(backend):
    torch._dynamo.reset()

    def make():
        torch.manual_seed(1)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, stride=2, padding=1),
            torch.nn.ReLU(), torch.nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(4, 1, 3, padding=1), torch.nn.Sigmoid())

    crit = pyaeplus.nn.SSIMLoss(win_size=7)
    data = torch.rand(4, 1, 20, 20)

    def step(model, opt, fn):
        opt.zero_grad()
        loss = fn(model, data)
        loss.backward()
        opt.step()
        return loss.detach()

    eager, compiled = make(), make()
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.5)
    opt_c = torch.optim.SGD(compiled.parameters(), lr=0.5)
    fwd = torch.compile(lambda m, d: crit(m(d), d), fullgraph=True, backend=backend)
    le = [step(eager, opt_e, lambda m, d: crit(m(d), d)) for _ in range(3)]
    lc = [step(compiled, opt_c, fwd) for _ in range(3)]
    torch.testing.assert_close(torch.stack(lc), torch.stack(le), atol=1e-5, rtol=1e-5)
    assert lc[-1] < lc[0]


# ---- bad input ------------------------------------------------------------------------------


def _raises(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


def test_bad_input():
    x, y = _pair((2, 3, 32, 32))
    _raises(ValueError, "same shape", lambda: pyaeplus.ssim(x, y[:, :2]))
    _raises(ValueError, "4-d", lambda: pyaeplus.ssim(x[0], y[0]))
    _raises(TypeError, "X must have dtype", lambda: pyaeplus.ssim((x * 255).to(torch.uint8), (y * 255).to(torch.uint8)))
    _raises(TypeError, "X must be a torch.Tensor", lambda: pyaeplus.ssim(x.numpy(), y))
    _raises(ValueError, "win_size must be odd", lambda: pyaeplus.ssim(x, y, win_size=8))
    _raises(ValueError, "win_size must be odd", lambda: pyaeplus.ssim(x, y, win_size=1))
    _raises(ValueError, "win_size 33 is larger", lambda: pyaeplus.ssim(x, y, win_size=33, padding="reflect"))
    _raises(ValueError, "win_size must be <= 32767", lambda: pyaeplus.ssim(x, y, win_size=2**31 - 1))
    _raises(TypeError, "win_size must be an int", lambda: pyaeplus.ssim(x, y, win_size=7.0))
    _raises(ValueError, "win_sigma must be > 0", lambda: pyaeplus.ssim(x, y, win_sigma=0))
    _raises(ValueError, "data_range must be > 0", lambda: pyaeplus.ssim(x, y, data_range=-1))
    _raises(ValueError, "data_range must be > 0", lambda: pyaeplus.ms_ssim(x, y, data_range=0))
    _raises(ValueError, "padding must be one of", lambda: pyaeplus.ssim(x, y, padding="mirror"))
    _raises(ValueError, "window must be one of", lambda: pyaeplus.ssim(x, y, window="box"))
    _raises(ValueError, "reduction must be one of", lambda: pyaeplus.ssim(x, y, reduction="avg"))
    _raises(TypeError, "K must be a pair", lambda: pyaeplus.ssim(x, y, K=0.01))
    _raises(ValueError, "K\\[1\\] must be > 0", lambda: pyaeplus.ssim(x, y, K=(0.01, -0.03)))
    _raises(ValueError, "K\\[0\\] must be > 0.*flat regions", lambda: pyaeplus.ssim(x, y, K=(0, 0)))
    _raises(ValueError, "alpha must be in", lambda: pyaeplus.l1_ssim_loss(x, y, alpha=1.5))
    _raises(ValueError, "smaller side > 160", lambda: pyaeplus.ms_ssim(x, y))
    _raises(ValueError, "win must have an odd length", lambda: pyaeplus.ssim(x, y, win=torch.ones(3, 1, 1, 4) / 4))
    _raises(ValueError, "win must be", lambda: pyaeplus.ssim(x, y, win=torch.ones(2, 1, 1, 5) / 5))
    _raises(ValueError, "must not be empty", lambda: pyaeplus.ssim(x[:0], y[:0]))
    _raises(ValueError, "channel=1", lambda: pyaeplus.nn.SSIM(channel=1)(x, y))
    xn = x.clone()
    xn[0, 1, 2, 3] = float("nan")
    _raises(ValueError, "X contains 1 NaN", lambda: pyaeplus.ssim(xn, y, check_finite=True))
    yi = y.clone()
    yi[1, 0, 0, 0] = float("inf")
    with pyaeplus.config.checks(True):
        _raises(ValueError, "Y contains 0 NaN and 1 Inf", lambda: pyaeplus.ssim_map(x, yi))
    # documented policy: NaN propagates by default ("auto" reads no data) and when checks are off
    assert torch.isnan(pyaeplus.ssim(xn, y))
    with pyaeplus.config.checks(False):
        assert torch.isnan(pyaeplus.ssim(xn, y, reduction="none")[0])
    if torch.cuda.is_available():
        _raises(ValueError, "Y is on", lambda: pyaeplus.ssim(x, y.cuda()))


@needs_cpu_ext
def test_op_level_checks_keep_kernels_memory_safe():
    x, y = _pair((1, 1, 8, 8))
    w = _window(9, torch.float32)
    with backends.use("cpu"):
        _raises(ValueError, "window size", lambda: ops.ssim_stats(x, y, w, 1e-4, 9e-4, 0, False))
        _raises(ValueError, "padding code", lambda: ops.ssim_stats(x, y, _window(3, torch.float32), 1e-4, 9e-4, 7,
                                                                    False))
        _raises(ValueError, "odd length", lambda: ops.ssim_stats(x, y, torch.ones(4) / 4, 1e-4, 9e-4, 0, False))
