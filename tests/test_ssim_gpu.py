"""SSIM on a GPU: each backend (Triton, CUDA C++) through the custom ops, against the
pure-PyTorch reference evaluated in float64 on the same device. Every padding mode, every
dtype, odd and large shapes (5x3x1080x1920), strides, both gradients (loss not last, per-pixel
map weights), determinism. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

import pyaeplus.ops.ssim  # noqa: F401  (registers pyaeplus::ssim_stats*)
from pyaeplus import backends
from pyaeplus.reference import ssim as ref
from conftest import GPU_BACKENDS, use_backend

pytestmark = pytest.mark.gpu

BACKENDS = GPU_BACKENDS
PADS = [0, 1, 2, 3, 4]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
C1, C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2

# Relative error bound (max |a - b| / (1 + max |b|)) against the float64 reference, per input
# dtype: sums / map (fp32 accumulation) and gradients (rounded to their storage dtype).
TOL = {
    torch.float64: (1e-11, 1e-11),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-5, 4e-3),
    torch.bfloat16: (2e-5, 3e-2),
}


@pytest.fixture(autouse=True)
def _exact_reference():
    # The reference uses conv2d: keep cuDNN from rounding it through TF32.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _pair(shape, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.rand(shape, generator=g, device="cuda", dtype=torch.float32)
    y = (x + 0.15 * torch.randn(shape, generator=g, device="cuda", dtype=torch.float32)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def _window(K, dtype):
    return ref.gaussian_window(K, 1.5).to("cuda", torch.float64 if dtype == torch.float64 else torch.float32)


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / (1 + b.abs().max())).item()


def _run(backend, x, y, w, pad, grads):
    with use_backend(backend):
        out = torch.ops.pyaeplus.ssim_stats(x, y, w, C1, C2, pad, True)
        dx, dy = torch.ops.pyaeplus._ssim_stats_backward(*grads, x, y, w, C1, C2, pad)
    torch.cuda.synchronize()
    return out, (dx, dy)


def _compare(backend, x, y, w, pad, *, with_map=True, seed=1):
    N, C, H, W = x.shape
    K = w.shape[0]
    Ho, Wo = (H - K + 1, W - K + 1) if pad == 0 else (H, W)
    acc = w.dtype
    g = torch.Generator(device="cuda").manual_seed(seed)
    grads = [torch.randn(N, C, generator=g, device="cuda", dtype=torch.float64) for _ in range(3)]
    gmap = torch.randn(N, C, Ho, Wo, generator=g, device="cuda", dtype=torch.float64) if with_map else None
    out, (dx, dy) = _run(backend, x, y, w, pad, [t.to(acc) for t in grads] + [None if gmap is None else gmap.to(acc)])
    # Reference in float64 on the inputs as given (rounded values included).
    x64, y64, w64 = x.double(), y.double(), w.double()
    r = ref.ssim_stats(x64, y64, w64, C1, C2, pad, True)
    rdx, rdy = ref.ssim_stats_backward(*grads, gmap, x64, y64, w64, C1, C2, pad)
    tol_f, tol_b = TOL[x.dtype]
    for name, a, b in zip(("ssim_sum", "cs_sum", "l1_sum", "map"), out, r):
        assert a.dtype == acc and a.shape == b.shape, name
        # Sums over many pixels: compare per pixel.
        scale = 1 if name == "map" else max(1, Ho * Wo if name != "l1_sum" else H * W)
        assert _rel(a / scale, b / scale) < tol_f, (backend, name, _rel(a / scale, b / scale))
    assert dx.dtype == x.dtype and dx.stride() == torch.empty_like(x).stride()
    assert _rel(dx, rdx) < tol_b, (backend, "dx", _rel(dx, rdx))
    assert _rel(dy, rdy) < tol_b, (backend, "dy", _rel(dy, rdy))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad", PADS)
def test_every_padding_and_dtype(backend, dtype, pad):
    x, y = _pair((2, 5, 67, 101), dtype, seed=pad)  # odd sizes, C > 3, several tiles
    _compare(backend, x, y, _window(11, dtype), pad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [3, 5, 7, 9, 13, 21])
@pytest.mark.parametrize("pad", [0, 2, 4])
def test_window_sizes(backend, K, pad):
    x, y = _pair((1, 2, 45, 77), torch.float32, seed=K)
    _compare(backend, x, y, _window(K, torch.float32), pad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad", PADS)
def test_tiny_images_and_odd_taps(backend, pad):
    # Image barely larger than the window (reflect / circular wrap over most of the image) and
    # taps that do not sum to 1.
    x, y = _pair((3, 1, 11, 12), torch.float64, seed=11)
    w = torch.tensor([0.05, 0.2, 0.4, 0.1, 0.3, 0.15, 0.02, 0.3, 0.1, 0.04, 0.2], device="cuda", dtype=torch.float64)
    _compare(backend, x, y, w, pad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_strided_inputs(backend, layout):
    bx, by = _pair((2, 6, 70, 90), torch.float32, seed=5)
    if layout == "channels_last":
        x = bx.contiguous(memory_format=torch.channels_last)
        y = by.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x, y = bx[:, ::2, 1:, ::2], by[:, 1::2, :-1, 1::2]
    else:
        x, y = bx.transpose(2, 3), by.transpose(2, 3)
    _compare(backend, x, y, _window(11, torch.float32), 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_bitwise(backend):
    x, y = _pair((2, 3, 257, 301), torch.float32, seed=9)
    w = _window(11, torch.float32)
    grads = [torch.randn(2, 3, device="cuda") for _ in range(3)] + [torch.randn(2, 3, 257, 301, device="cuda")]
    a = _run(backend, x, y, w, 1, grads)
    b = _run(backend, x, y, w, 1, grads)
    assert all(torch.equal(u, v) for u, v in zip(a[0], b[0]))
    assert all(torch.equal(u, v) for u, v in zip(a[1], b[1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_cpu_kernel(backend):
    x, y = _pair((2, 3, 64, 80), torch.float32, seed=4)
    w = _window(11, torch.float32)
    grads = [torch.randn(2, 3, device="cuda") for _ in range(3)] + [None]
    out, (dx, dy) = _run(backend, x, y, w, 3, grads)
    with backends.use("cpu"):
        cout = torch.ops.pyaeplus.ssim_stats(x.cpu(), y.cpu(), w.cpu(), C1, C2, 3, True)
        cdx, cdy = torch.ops.pyaeplus._ssim_stats_backward(*[g.cpu() for g in grads[:3]], None, x.cpu(), y.cpu(),
                                                          w.cpu(), C1, C2, 3)
    for a, b in zip(out, cout):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dx.cpu(), cdx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dy.cpu(), cdy, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autograd_loss_not_last(backend):
    x, y = _pair((2, 3, 50, 61), torch.float32, seed=2)
    w = _window(11, torch.float32)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    with use_backend(backend):
        s, cs, l1, m = torch.ops.pyaeplus.ssim_stats(xr, yr, w, C1, C2, 1, True)
        loss = 3.5 * (1 - s.sum() / m[0, 0].numel()) + 0.25 * l1.sum() - 0.5 * (m * m).mean()
        gx, gy = torch.autograd.grad(loss, (xr, yr))
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    rs, rcs, rl1, rm = ref.ssim_stats(x64, y64, w.double(), C1, C2, 1, True)
    rloss = 3.5 * (1 - rs.sum() / rm[0, 0].numel()) + 0.25 * rl1.sum() - 0.5 * (rm * rm).mean()
    rgx, rgy = torch.autograd.grad(rloss, (x64, y64))
    assert _rel(gx, rgx) < 2e-5 and _rel(gy, rgy) < 2e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,pad", [(torch.float32, 0), (torch.float32, 1), (torch.bfloat16, 2)])
def test_large_1080p_batch(backend, dtype, pad):
    # 5x3x1080x1920: the benchmark shape; int64 offsets, thousands of CTAs per plane.
    x, y = _pair((5, 3, 1080, 1920), dtype, seed=13)
    _compare(backend, x, y, _window(11, dtype), pad, with_map=pad == 1)


def test_cuda_backend_rejects_window_too_large_for_shared_memory():
    x, y = _pair((1, 1, 80, 80), torch.float64)
    w = _window(31, torch.float64)
    grads = [torch.randn(1, 1, device="cuda", dtype=torch.float64) for _ in range(3)] + [None]
    with backends.use("cuda"), pytest.raises(ValueError, match="shared memory"):
        torch.ops.pyaeplus._ssim_stats_backward(*grads, x, y, w, C1, C2, 1)
    # The Triton backend has no such limit.
    _compare("triton", x, y, w, 1)
