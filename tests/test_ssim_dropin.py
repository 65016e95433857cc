"""Drop-in means pytorch-msssim's behaviour (issue 12 item 3): ``data_range`` and ``K`` as
numbers or 0-d tensors, a window larger than an image side (its warning, no smoothing along that
side, its numbers), 5-D volumes with a small depth, the modules (``.win``, ``spatial_dims=3``);
every case within 1e-5 of pytorch-msssim 1.0. Plus the argument checks of issue 18 (NaN in
``win``, ``K=(0, 0)``, a huge ``win_size``, the module constructors, meta tensors) and the
keyword-only options of pyaeplus' own loss modules."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import pyaeplus
from pyaeplus import nn as pnn

pm = pytest.importorskip("pytorch_msssim")
ATOL = dict(atol=1e-5, rtol=0)


def _pair(shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return (x * scale).float(), (y * scale).float()


def _both(fn_ours, fn_theirs, *args, **kw):
    """Run both, collecting their warnings; return (ours, theirs, our messages, their messages)."""
    with warnings.catch_warnings(record=True) as wo:
        warnings.simplefilter("always")
        a = fn_ours(*args, **kw)
    with warnings.catch_warnings(record=True) as wt:
        warnings.simplefilter("always")
        b = fn_theirs(*args, **kw)
    return a, b, {str(w.message) for w in wo}, {str(w.message) for w in wt}


@pytest.mark.parametrize("data_range", [255, 255.0, torch.tensor(255.0), torch.tensor(255), torch.tensor([255.0])])
@pytest.mark.parametrize("K", [(0.01, 0.03), [0.02, 0.05], (torch.tensor(0.01), torch.tensor(0.03)),
                               torch.tensor([0.01, 0.03])])
def test_data_range_and_K_as_numbers_or_tensors(data_range, K):
    x, y = _pair((2, 3, 33, 35), scale=255)
    for fn, kw in ((pyaeplus.ssim, {}), (pyaeplus.ssim, {"size_average": False}),
                   (pyaeplus.ms_ssim, {"win_size": 3, "weights": [0.5, 0.5]})):
        theirs = getattr(pm, fn.__name__)(x, y, data_range=data_range, K=K, **kw)
        torch.testing.assert_close(fn(x, y, data_range=data_range, K=K, **kw), theirs, **ATOL)
    torch.testing.assert_close(pnn.SSIM(data_range=data_range, K=K)(x, y), pm.SSIM(data_range=data_range, K=K)(x, y),
                               **ATOL)


@pytest.mark.parametrize("shape,win_size", [((2, 3, 7, 40), 11), ((2, 2, 40, 9), 11), ((1, 2, 5, 6), 7),
                                            ((2, 1, 4, 30), 5)])
@pytest.mark.parametrize("size_average", [True, False])
def test_window_larger_than_a_side_skips_that_side(shape, win_size, size_average):
    x, y = _pair(shape)
    kw = dict(data_range=1.0, win_size=win_size, size_average=size_average)
    ours, theirs, wo, wt = _both(pyaeplus.ssim, pm.ssim, x, y, **kw)
    torch.testing.assert_close(ours, theirs, **ATOL)
    assert wo == wt and any("Skipping Gaussian Smoothing" in m for m in wo), (wo, wt)
    ours, theirs, _, _ = _both(lambda *a, **k: pnn.SSIM(win_size=win_size, channel=shape[1], data_range=1.0,
                                                         size_average=size_average)(*a),
                               lambda *a, **k: pm.SSIM(win_size=win_size, channel=shape[1], data_range=1.0,
                                                       size_average=size_average)(*a), x, y)
    torch.testing.assert_close(ours, theirs, **ATOL)
    # gradients too (the general path is differentiable like pytorch-msssim's convolutions)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyaeplus.ssim(xa, y, **kw).sum().backward()
        pm.ssim(xb, y, **kw).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-3)


def test_window_larger_than_a_side_with_padding_is_a_clear_error():
    x, y = _pair((1, 1, 7, 40))
    with pytest.raises(ValueError, match="padding='reflect' needs a window that fits"):
        pyaeplus.ssim(x, y, win_size=11, padding="reflect")


@pytest.mark.parametrize("depth,size_average", [(2, True), (5, False), (10, True), (13, False)])
def test_5d_with_small_depth(depth, size_average):
    x, y = _pair((2, 2, depth, 24, 25))
    kw = dict(data_range=1.0, size_average=size_average)
    ours, theirs, wo, wt = _both(pyaeplus.ssim, pm.ssim, x, y, **kw)
    torch.testing.assert_close(ours, theirs, **ATOL)
    assert wo == wt
    ours, theirs, _, _ = _both(pyaeplus.ssim, pm.ssim, x, y, win_size=5, nonnegative_ssim=True, **kw)
    torch.testing.assert_close(ours, theirs, **ATOL)
    mod_o = pnn.SSIM(data_range=1.0, channel=2, spatial_dims=3, size_average=size_average)
    mod_t = pm.SSIM(data_range=1.0, channel=2, spatial_dims=3, size_average=size_average)
    assert mod_o.win.shape == mod_t.win.shape == (2, 1, 1, 1, 11)
    torch.testing.assert_close(mod_o.win, mod_t.win, atol=0, rtol=0)
    ours, theirs, _, _ = _both(mod_o, mod_t, x, y)
    torch.testing.assert_close(ours, theirs, **ATOL)


def test_5d_ms_ssim_with_a_depth_that_gets_skipped():
    x, y = _pair((1, 2, 9, 166, 161))        # depth 9 -> 5 -> 3 -> 2 -> 1: never smoothed
    ours, theirs, wo, wt = _both(pyaeplus.ms_ssim, pm.ms_ssim, x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ours, theirs, **ATOL)
    assert wo == wt and wo
    mod = _both(pnn.MS_SSIM(data_range=1.0, channel=2, spatial_dims=3),
                pm.MS_SSIM(data_range=1.0, channel=2, spatial_dims=3), x, y)
    torch.testing.assert_close(mod[0], mod[1], **ATOL)


def test_5d_ms_ssim_too_shallow_is_a_clear_error():
    # pytorch-msssim fails inside avg_pool3d ("input image (T: 1 ...) smaller than kernel size")
    x, y = _pair((1, 1, 8, 176, 180))
    with pytest.raises(RuntimeError, match="smaller than kernel size"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.ms_ssim(x, y, data_range=1.0)
    with pytest.raises(ValueError, match="cannot be halved 4 times"), warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the depth (8 < 11) is not smoothed: the warning comes first
        pyaeplus.ms_ssim(x, y, data_range=1.0)


def test_5d_per_channel_window_matches():
    x, y = _pair((2, 3, 12, 14, 15))
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    win = torch.cat([_fspecial_gauss_1d(5, s) for s in (0.8, 1.5, 2.0)]).reshape(3, 1, 1, 1, 5)
    ours, theirs, _, _ = _both(pyaeplus.ssim, pm.ssim, x, y, data_range=1.0, win=win, size_average=False)
    torch.testing.assert_close(ours, theirs, **ATOL)


@pytest.mark.parametrize("padding", ["same", "reflect", "replicate", "circular"])
def test_5d_padding_modes(padding):
    """Padding the images then taking the valid SSIM (pytorch-msssim's numbers on the padded
    volume) is the padded SSIM: every padded voxel is a copy of one source voxel (or zero)."""
    x, y = _pair((2, 2, 7, 10, 11))
    mode = {"same": "constant"}.get(padding, padding)
    r = 2
    want = pm.ssim(F.pad(x, (r,) * 6, mode=mode), F.pad(y, (r,) * 6, mode=mode), data_range=1.0, win_size=5,
                   size_average=False)
    got = pyaeplus.ssim(x, y, data_range=1.0, win_size=5, padding=padding, size_average=False)
    torch.testing.assert_close(got, want, **ATOL)
    m = pyaeplus.ssim_map(x, y, data_range=1.0, win_size=5, padding=padding)
    assert m.shape == x.shape
    torch.testing.assert_close(m.mean((1, 2, 3, 4)), got, **ATOL)
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: pyaeplus.ssim(a, b, data_range=1.0, win_size=3, padding=padding,
                                                               reduction="none"),
                                    (xd[:1, :1, :5, :6, :5].detach().requires_grad_(),
                                     yd[:1, :1, :5, :6, :5].detach().requires_grad_()), fast_mode=True)


def test_4d_general_path_with_padding_matches_the_fused_kernels():
    """A per-channel window takes the general path; with equal rows it must agree with the
    fused kernels for every padding (the general path now takes every mode)."""
    x, y = _pair((2, 3, 20, 21))
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    win = _fspecial_gauss_1d(7, 1.5).repeat(3, 1, 1, 1)
    for padding in ("valid", "same", "reflect", "replicate", "circular"):
        fused = pyaeplus.ssim_map(x, y, data_range=1.0, win_size=7, padding=padding)
        from pyaeplus.reference import ssim as ref

        general = ref.ssim_general(x, y, win, 1e-4, 9e-4, {"valid": 0, "same": 1, "reflect": 2, "replicate": 3,
                                                           "circular": 4}[padding], (False, False), True)[2]
        torch.testing.assert_close(fused, general, **ATOL)


# ---- issue 18: argument checks -------------------------------------------------------------

def test_nan_or_inf_in_win_is_a_clear_error():
    x, y = _pair((1, 3, 20, 20))
    for bad in (float("nan"), float("inf")):
        win = torch.full((3, 1, 1, 5), 0.2)
        win[1, 0, 0, 2] = bad
        with pytest.raises(ValueError, match="win contains"):
            pyaeplus.ssim(x, y, win=win)
        with pytest.raises(ValueError, match="win contains"):
            pyaeplus.ms_ssim(x, y, win=win[1, 0, 0])


def test_K_zero_is_a_clear_error():
    x, y = _pair((1, 1, 20, 20))
    for K in ((0, 0), (0.0, 0.03), (0.01, 0), (torch.tensor(0.0), 0.03)):
        with pytest.raises(ValueError, match="must be > 0.*flat regions"):
            pyaeplus.ssim(x, y, K=K)
        with pytest.raises(ValueError, match="must be > 0"):
            pnn.SSIM(K=K)


def test_huge_win_size_is_rejected_before_any_allocation(monkeypatch):
    from pyaeplus.reference import ssim as ref

    def no_taps(size, *a):
        raise AssertionError(f"a window of {size} taps was built")
    monkeypatch.setattr(ref, "gaussian_window", no_taps)
    monkeypatch.setattr(ref, "uniform_window", no_taps)
    x, y = _pair((1, 1, 16, 16))
    for fn in (pyaeplus.ssim, pyaeplus.ms_ssim, pyaeplus.ssim_map, pyaeplus.l1_ssim_loss):
        with pytest.raises(ValueError, match="win_size must be <= 32767"):
            fn(x, y, win_size=2**31 - 1)
    for cls in (pnn.SSIM, pnn.MS_SSIM, pnn.SSIMLoss, pnn.MS_SSIMLoss, pnn.L1SSIMLoss):
        with pytest.raises(ValueError, match="win_size must be <= 32767"):
            cls(win_size=2**31 - 1)
    # a window longer than every side needs no taps at all (every side skipped, as pytorch-msssim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.isfinite(pyaeplus.ssim(x, y, win_size=31))


@pytest.mark.parametrize("cls", [pnn.SSIM, pnn.MS_SSIM])
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"data_range": -1}, ValueError, "data_range must be > 0"),
    ({"data_range": "255"}, TypeError, "data_range must be a real number"),
    ({"win_size": 4}, ValueError, "win_size must be odd"),
    ({"win_size": 7.0}, TypeError, "win_size must be an int"),
    ({"win_sigma": 0}, ValueError, "win_sigma must be > 0"),
    ({"K": (0.01,)}, TypeError, "K must be a pair"),
    ({"channel": 0}, ValueError, "channel must be a positive int"),
    ({"spatial_dims": 4}, ValueError, "spatial_dims must be 2 or 3"),
    ({"size_average": "yes"}, TypeError, "size_average must be a bool"),
    ({"padding": "mirror"}, ValueError, "padding must be one of"),
    ({"window": "box"}, ValueError, "window must be one of"),
    ({"reduction": "avg"}, ValueError, "reduction must be one of"),
])
def test_module_constructors_validate(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


def test_module_constructor_specifics():
    with pytest.raises(TypeError, match="nonnegative_ssim must be a bool"):
        pnn.SSIM(nonnegative_ssim=1)
    with pytest.raises(TypeError, match="weights must be a non-empty list"):
        pnn.MS_SSIM(weights=[])
    with pytest.raises(ValueError, match="weights\\[1\\] must be finite"):
        pnn.MS_SSIMLoss(weights=[0.5, float("nan")])
    with pytest.raises(ValueError, match="alpha must be in"):
        pnn.L1SSIMLoss(alpha=2.0)
    with pytest.raises(AttributeError):
        pnn.SSIM().win = torch.ones(3, 1, 1, 11)      # read-only: forward never reads a stale copy


@pytest.mark.parametrize("make", [lambda: pnn.SSIMLoss(5), lambda: pnn.L1SSIMLoss(0.5), lambda: pnn.MS_SSIMLoss(1.0),
                                  lambda: pnn.TopK(5, True), lambda: pnn.LaplacianRegularizer(0.5),
                                  lambda: pnn.SparseDecoder(10, 5, False)])
def test_own_modules_take_options_keyword_only(make):
    """``SSIMLoss(5)`` would be kornia's / piq's window size 5, pytorch-msssim's data_range 5."""
    with pytest.raises(TypeError):
        make()


def test_meta_tensors_compute_shapes():
    x = torch.empty(2, 3, 32, 33, device="meta")
    assert pyaeplus.ssim(x, x).shape == () and pyaeplus.ssim(x, x).device.type == "meta"
    assert pyaeplus.ssim(x, x, size_average=False).shape == (2,)
    assert pyaeplus.ssim_map(x, x, padding="reflect").shape == x.shape
    assert pyaeplus.l1_ssim_loss(x, x, reduction="none").shape == (2,)
    assert pyaeplus.ssim(x, x, check_finite=True).shape == ()          # nothing to read: no error
    v = torch.empty(2, 3, 4, 5, 6, device="meta")
    assert pyaeplus.ssim(v, v, win_size=3, padding="circular").shape == ()
    assert pyaeplus.sparse_decode(torch.empty(4, 3, device="meta"), torch.zeros(4, 3, dtype=torch.long,
                                  device="meta"), torch.empty(10, 5, device="meta")).shape == (4, 5)
    with pytest.raises(ValueError, match="data_range is a meta tensor"):
        pyaeplus.ssim(x, x, data_range=torch.tensor(1.0, device="meta"))
