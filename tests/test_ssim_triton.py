"""Triton SSIM kernels (pyaeplus/kernels/ssim.py) under TRITON_INTERPRET=1 on CPU tensors,
against the pure-PyTorch reference (pyaeplus/reference/ssim.py): values, both gradients, every
padding mode, odd sizes, several windows, strides, dtypes. Shapes are small: the interpreter
is ~1000x slower than a GPU. Small tiles (``_tiles``) force several tiles per plane so that
tile seams and the padding folds at both borders are exercised."""

from __future__ import annotations

import pytest
import torch

from pyaeplus.reference import ssim as ref

pytestmark = pytest.mark.interpret

C1, C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
PADS = [0, 1, 2, 3, 4]

# (atol, rtol) of the sums / map and of the gradients, per input dtype. fp16 / bf16 inputs are
# compared with the reference run on the same (rounded) values in fp32: the sums must agree
# to fp32 accuracy, the gradients to the rounding of their own storage dtype.
TOL = {
    torch.float64: ((1e-10, 1e-10), (1e-10, 1e-10)),
    torch.float32: ((2e-4, 1e-5), (1e-5, 1e-4)),
    torch.float16: ((2e-4, 1e-5), (2e-3, 2e-3)),
    torch.bfloat16: ((2e-4, 1e-5), (1.6e-2, 1.6e-2)),
}


def _kernels():
    from pyaeplus.kernels import ssim as k

    return k


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def _window(K, dtype, kind="gauss"):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w = ref.gaussian_window(K, 1.5) if kind == "gauss" else ref.uniform_window(K)
    return w.to(acc)


def _grads(N, C, Ho, Wo, acc, with_map, seed=1):
    g = torch.Generator().manual_seed(seed)
    gs = torch.randn(N, C, generator=g, dtype=torch.float64).to(acc)
    gc = torch.randn(N, C, generator=g, dtype=torch.float64).to(acc)
    gl = torch.randn(N, C, generator=g, dtype=torch.float64).to(acc)
    gm = torch.randn(N, C, Ho, Wo, generator=g, dtype=torch.float64).to(acc) if with_map else None
    return gs, gc, gl, gm


def _check(x, y, w, pad, *, tiles=None, btiles=None, with_map=True):
    k = _kernels()
    dt = x.dtype
    (fa, fr), (ba, br) = TOL[dt]
    r = ref.ssim_stats(x, y, w, C1, C2, pad, True)
    o = k.ssim_stats_forward(x, y, w, C1, C2, pad, True, _tiles=tiles)
    for name, a, b in zip(("ssim_sum", "cs_sum", "l1_sum", "map"), o, r):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=fa * max(1, b[0].numel()) ** 0.5, rtol=fr, msg=name)
    N, C = x.shape[:2]
    Ho, Wo = r[3].shape[-2:]
    gs, gc, gl, gm = _grads(N, C, Ho, Wo, w.dtype, with_map)
    rdx, rdy = ref.ssim_stats_backward(gs, gc, gl, gm, x, y, w, C1, C2, pad)
    dx, dy = k.ssim_stats_backward(gs, gc, gl, gm, x, y, w, C1, C2, pad, _tiles=btiles)
    assert dx.dtype == dt and dx.shape == x.shape and dx.stride() == torch.empty_like(x).stride()
    torch.testing.assert_close(dx, rdx, atol=ba, rtol=br, msg="dx")
    torch.testing.assert_close(dy, rdy, atol=ba, rtol=br, msg="dy")


@pytest.mark.parametrize("pad,K", [(p, 3) for p in PADS] + [(2, 7), (3, 7), (4, 7)])
def test_every_padding_multi_tile_float64(pad, K):
    # Tiles far smaller than the image: seams, both borders, folds, wrap-around.
    x, y = _pair((1, 1, 19, 25) if K == 3 else (1, 1, 21, 23), torch.float64)
    _check(x, y, _window(K, torch.float64), pad, tiles=(16, 16), btiles=(16, 16) if K == 3 else (32, 32))


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_default_tiles_float32_window11(pad):
    x, y = _pair((1, 5, 25, 23), torch.float32, seed=pad)  # C > 3, odd sizes
    _check(x, y, _window(11, torch.float32), pad)


@pytest.mark.parametrize("dtype,pad", [(torch.float16, 0), (torch.bfloat16, 3)])
def test_half_inputs_fp32_accumulation(dtype, pad):
    x, y = _pair((1, 2, 17, 20), dtype)
    _check(x, y, _window(7, dtype), pad, with_map=False)


def test_uniform_window_and_window_not_summing_to_one():
    x, y = _pair((1, 1, 17, 18), torch.float64)
    _check(x, y, _window(5, torch.float64, "uniform"), 2)
    # The kernels must not assume the taps sum to 1.
    w = torch.tensor([0.1, 0.7, 0.3, 0.2, 0.05], dtype=torch.float64)
    _check(x, y, w, 4)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_strided_inputs_without_copy(layout):
    base_x, base_y = _pair((1, 4, 20, 22), torch.float32, seed=3)
    if layout == "channels_last":
        x = base_x.contiguous(memory_format=torch.channels_last)
        y = base_y.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x, y = base_x[:, ::2, 1:, ::2], base_y[:, 1::2, :-1, 1::2]
    else:
        x, y = base_x.transpose(2, 3), base_y.transpose(2, 3)
    assert not x.is_contiguous()
    # _check also asserts that dx keeps x's memory format (channels_last stays channels_last).
    _check(x, y, _window(7, torch.float32), 3)


def test_no_map_and_equal_images():
    k = _kernels()
    x, _ = _pair((1, 2, 13, 15), torch.float32)
    w = _window(7, torch.float32)
    s, cs, l1, m = k.ssim_stats_forward(x, x.clone(), w, C1, C2, 1, False)
    assert m.shape == (0,)
    # SSIM of an image with itself is 1 at every pixel; |x - y| is 0, and so is its gradient.
    torch.testing.assert_close(s, torch.full_like(s, 13 * 15.0), rtol=1e-5, atol=1e-3)
    assert torch.equal(l1, torch.zeros_like(l1))
    gs, gc, gl, _ = _grads(1, 2, 13, 15, torch.float32, False)
    dx, dy = k.ssim_stats_backward(torch.zeros_like(gs), torch.zeros_like(gc), gl, None, x, x.clone(), w,
                                   C1, C2, 1)
    assert torch.equal(dx, torch.zeros_like(dx)) and torch.equal(dy, torch.zeros_like(dy))


def test_deterministic_bitwise():
    k = _kernels()
    x, y = _pair((1, 1, 23, 27), torch.float32, seed=5)
    w = _window(7, torch.float32)
    g = _grads(1, 1, 23, 27, torch.float32, True)
    a = k.ssim_stats_forward(x, y, w, C1, C2, 2, True, _tiles=(16, 16))
    b = k.ssim_stats_forward(x, y, w, C1, C2, 2, True, _tiles=(16, 16))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    da = k.ssim_stats_backward(*g, x, y, w, C1, C2, 2, _tiles=(32, 32))
    db = k.ssim_stats_backward(*g, x, y, w, C1, C2, 2, _tiles=(32, 32))
    assert all(torch.equal(u, v) for u, v in zip(da, db))


class _TritonSSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, w, pad):
        ctx.save_for_backward(x, y, w)
        ctx.pad = pad
        s, cs, l1, m = _kernels().ssim_stats_forward(x, y, w, C1, C2, pad, True)
        return s, cs, l1, m

    @staticmethod
    def backward(ctx, gs, gc, gl, gm):
        x, y, w = ctx.saved_tensors
        dx, dy = _kernels().ssim_stats_backward(gs, gc, gl, gm, x, y, w, C1, C2, ctx.pad)
        return dx, dy, None, None


@pytest.mark.parametrize("pad", [1, 3])
def test_gradcheck_float64(pad):
    x, y = _pair((1, 1, 6, 7), torch.float64, seed=7)
    x.requires_grad_(True)
    y.requires_grad_(True)
    w = _window(3, torch.float64)
    # fast_mode: one random projection of the Jacobian, a handful of interpreter launches.
    assert torch.autograd.gradcheck(lambda a, b: _TritonSSIM.apply(a, b, w, pad), (x, y), fast_mode=True)
