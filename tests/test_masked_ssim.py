"""ssim / ssim_map with mask=: normalized-convolution statistics over valid pixels only, checked against a
per-position brute force for every padding mode, a mask of ones against the unmasked SSIM, invariance to
the values of invalid pixels (what pytorch-msssim issue 50 asks for), NaN handling, gradients, autocast,
torch.compile (aot_eager: the graph, not inductor's codegen) and bad input."""

import numpy as np
import pytest
import torch

import pyaeplus
from pyaeplus.reference.ssim import gaussian_window

PADDINGS = ["valid", "same", "reflect", "replicate", "circular"]
_NP_PAD = {"same": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(shape=(3, 2, 19, 23), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    y = (x + 0.2 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    mask = torch.rand((shape[0], 1) + shape[2:], generator=g) > 0.35
    return x, y, mask


def brute_map(x: np.ndarray, y: np.ndarray, m: np.ndarray, win: int, padding: str, c1=1e-4, c2=9e-4) -> np.ndarray:
    """One channel (H, W): at each output position, the window weights times the mask, rescaled to the
    taps' total, give mean/variance/covariance; NaN where the centre pixel is invalid."""
    g = gaussian_window(win, 1.5).double().numpy()
    G = np.outer(g, g)
    r = win // 2
    if padding != "valid":
        x, y = np.pad(x, r, mode=_NP_PAD[padding]), np.pad(y, r, mode=_NP_PAD[padding])
        m = np.pad(m, r, mode="constant", constant_values=1) if padding == "same" else np.pad(m, r, mode=_NP_PAD[padding])
    H, W = x.shape
    out = np.full((H - 2 * r, W - 2 * r), np.nan)
    for i in range(r, H - r):
        for j in range(r, W - r):
            if not m[i, j]:
                continue
            w = G * m[i - r:i + r + 1, j - r:j + r + 1]
            w = w / (w.sum() / G.sum())
            px, py = x[i - r:i + r + 1, j - r:j + r + 1], y[i - r:i + r + 1, j - r:j + r + 1]
            mx, my = (w * px).sum(), (w * py).sum()
            sxx, syy = (w * px * px).sum() - mx * mx, (w * py * py).sum() - my * my
            sxy = (w * px * py).sum() - mx * my
            out[i - r, j - r] = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return out


@pytest.mark.parametrize("padding", PADDINGS)
def test_map_matches_brute_force(padding):
    x, y, mask = _pair((2, 2, 13, 17))
    got = pyaeplus.ssim_map(x, y, data_range=1.0, win_size=5, padding=padding, mask=mask)
    for n in range(2):
        for c in range(2):
            want = brute_map(x[n, c].numpy(), y[n, c].numpy(), mask[n, 0].numpy().astype(float), 5, padding)
            np.testing.assert_allclose(got[n, c].numpy(), want, atol=1e-12, equal_nan=True)
    # the per-image value: mean over valid positions per channel, then over channels
    per = pyaeplus.ssim(x, y, data_range=1.0, win_size=5, padding=padding, mask=mask, reduction="none")
    torch.testing.assert_close(per, got.flatten(2).nanmean(-1).mean(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("padding", PADDINGS)
def test_mask_of_ones_is_the_unmasked_ssim(padding, dtype):
    x, y, _ = _pair(dtype=dtype)
    ones = torch.ones(x.shape[-2:], dtype=torch.bool)
    kw = {"data_range": 1.0, "win_size": 7, "padding": padding}
    for red in ("none", "mean", "sum"):
        torch.testing.assert_close(pyaeplus.ssim(x, y, mask=ones, reduction=red, **kw),
                                   pyaeplus.ssim(x, y, reduction=red, **kw), atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(pyaeplus.ssim_map(x, y, mask=ones.double(), **kw), pyaeplus.ssim_map(x, y, **kw),
                               atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10)


@pytest.mark.parametrize("padding", ["valid", "same", "reflect"])
def test_invalid_pixels_never_matter(padding):
    x, y, mask = _pair()
    g = torch.Generator().manual_seed(5)
    x2 = torch.where(mask, x, -3 * torch.rand(x.shape, generator=g, dtype=x.dtype))
    y2 = torch.where(mask, y, 7 * torch.rand(y.shape, generator=g, dtype=y.dtype))
    kw = {"data_range": 1.0, "win_size": 7, "padding": padding, "mask": mask}
    torch.testing.assert_close(pyaeplus.ssim(x2, y2, reduction="none", **kw), pyaeplus.ssim(x, y, reduction="none", **kw),
                               atol=1e-12, rtol=0)
    # averaging the unmasked map over the mask lets the invalid values in: a different number
    naive = pyaeplus.ssim_map(x2, y2, data_range=1.0, win_size=7, padding="same")[mask.expand_as(x2)].mean()
    assert abs(float(naive) - float(pyaeplus.ssim(x, y, **kw))) > 1e-2


def test_mask_shapes_channels_and_nan_images():
    x, y, mask = _pair()
    kw = {"data_range": 1.0, "win_size": 7}
    full = pyaeplus.ssim(x, y, mask=mask, reduction="none", **kw)
    torch.testing.assert_close(pyaeplus.ssim(x, y, mask=mask[:, 0], reduction="none", **kw), full)    # (N, H, W)
    torch.testing.assert_close(pyaeplus.ssim(x, y, mask=mask.expand_as(x).float(), reduction="none", **kw), full)
    shared = pyaeplus.ssim(x, y, mask=mask[0, 0], reduction="none", **kw)                              # (H, W)
    torch.testing.assert_close(shared[0], full[0])
    # per-channel masks: channel 1 fully invalid in image 0 -> image 0 is channel 0's SSIM
    pc = mask.expand_as(x).clone()
    pc[0, 1] = False
    per = pyaeplus.ssim(x, y, mask=pc, reduction="none", **kw)
    m0 = pyaeplus.ssim_map(x[:1, :1], y[:1, :1], mask=mask[:1], **kw)
    torch.testing.assert_close(per[0], m0.nanmean())
    # an image without valid pixels is NaN; mean and sum skip it
    none = mask.clone()
    none[1] = False
    per = pyaeplus.ssim(x, y, mask=none, reduction="none", **kw)
    assert torch.isnan(per[1]) and torch.isfinite(per[[0, 2]]).all()
    torch.testing.assert_close(pyaeplus.ssim(x, y, mask=none, **kw), per[[0, 2]].mean())
    torch.testing.assert_close(pyaeplus.ssim(x, y, mask=none, reduction="sum", **kw), per[[0, 2]].sum())
    assert torch.isnan(pyaeplus.ssim(x, y, mask=torch.zeros_like(mask), **kw))
    nn = pyaeplus.ssim(x, y, mask=mask, nonnegative_ssim=True, size_average=False, **kw)
    assert (nn >= 0).all()


def test_gradcheck():
    x, y, mask = _pair((2, 1, 11, 12))
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    for padding in ("valid", "reflect"):
        assert torch.autograd.gradcheck(
            lambda a, b: pyaeplus.ssim(a, b, data_range=1.0, win_size=5, padding=padding, mask=mask), (xg, yg))
    # invalid pixels get no gradient at all
    loss = 1 - pyaeplus.ssim(xg, yg, data_range=1.0, win_size=5, mask=mask)
    (gx,) = torch.autograd.grad(loss, xg)
    assert (gx[~mask.expand_as(gx)] == 0).all() and torch.isfinite(gx).all()


def test_autocast_and_compile():
    x, y, mask = _pair((2, 1, 11, 12))
    # bf16 under autocast, fp32 accumulation: close to the fp32 value
    xf, yf = x.float(), y.float()
    want = pyaeplus.ssim(xf, yf, data_range=1.0, win_size=5, mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pyaeplus.ssim(xf.bfloat16(), yf.bfloat16(), data_range=1.0, win_size=5, mask=mask)
        plain = pyaeplus.ssim(xf.bfloat16(), yf.bfloat16(), data_range=1.0, win_size=5)
    # the unmasked SSIM's dtype rule: float32 for half inputs under autocast
    assert got.dtype == plain.dtype == torch.float32 and abs(float(got) - float(want)) < 2e-2
    f = torch.compile(lambda a, b, m: pyaeplus.ssim(a, b, data_range=1.0, win_size=5, mask=m, reduction="none"),
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(xf, yf, mask), pyaeplus.ssim(xf, yf, data_range=1.0, win_size=5, mask=mask,
                                                              reduction="none"))


def test_bad_mask():
    x, y, mask = _pair()
    kw = {"data_range": 1.0, "win_size": 7}
    with pytest.raises(ValueError, match="mask must be"):
        pyaeplus.ssim(x, y, mask=mask[:, :, :-1], **kw)
    with pytest.raises(ValueError, match="mask must be"):
        pyaeplus.ssim(x, y, mask=mask[:2], **kw)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        pyaeplus.ssim(x, y, mask=mask.numpy(), **kw)
    with pytest.raises(ValueError, match="4-d"):
        pyaeplus.ssim(x[:, :, None].expand(3, 2, 9, 19, 23), y[:, :, None].expand(3, 2, 9, 19, 23), mask=mask, **kw)
    with pytest.raises(ValueError, match="reduction"):
        pyaeplus.ssim(x, y, mask=mask, reduction="avg", **kw)


@pytest.mark.gpu
def test_cuda_equals_cpu():
    x, y, mask = _pair(dtype=torch.float32)
    for padding in ("valid", "same", "reflect"):
        kw = {"data_range": 1.0, "win_size": 7, "padding": padding}
        want = pyaeplus.ssim(x, y, mask=mask, reduction="none", **kw)
        got = pyaeplus.ssim(x.cuda(), y.cuda(), mask=mask.cuda(), reduction="none", **kw)
        torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mask is on"):
        pyaeplus.ssim(x.cuda(), y.cuda(), mask=mask, data_range=1.0, win_size=7)
