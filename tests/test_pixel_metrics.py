"""pyaeplus.scoring.pixel_metrics against an independent brute force (scikit-learn's ROC AUC over all
pixels; AUPRO from a threshold-by-threshold PRO curve over flood-filled 8-connected regions), with ties,
several regions per image and all-normal images; the error bound of the histogram-only result; chunking
and memory-budget paths; the map post-processing (resize, Gaussian, normalization) and localize()."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pyaeplus import models, scoring
from pyaeplus.scoring import maps as M
from pyaeplus.scoring import pixel_metrics


pytestmark = pytest.mark.usefixtures("one_thread")


def _regions(g: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of one mask by flood fill (no scipy): a list of boolean masks."""
    H, W = g.shape
    seen = np.zeros_like(g, dtype=bool)
    out = []
    for i in range(H):
        for j in range(W):
            if g[i, j] and not seen[i, j]:
                reg = np.zeros_like(seen)
                stack = [(i, j)]
                seen[i, j] = True
                while stack:
                    a, b = stack.pop()
                    reg[a, b] = True
                    for y in range(max(0, a - 1), min(H, a + 2)):
                        for x in range(max(0, b - 1), min(W, b + 2)):
                            if g[y, x] and not seen[y, x]:
                                seen[y, x] = True
                                stack.append((y, x))
                out.append(reg)
    return out


def brute_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """PRO curve at every distinct threshold (pixels >= t are flagged), from (0, 0) to (1, 1), linearly
    interpolated at the limit, integrated by trapezoids, divided by the limit."""
    regions = [(m, r) for m, g in zip(maps, masks) for r in _regions(g)]
    neg = maps[masks == 0]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(np.mean(neg >= t))
        ys.append(np.mean([np.mean(m[r] >= t) for m, r in regions]))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            yl = y0 + (limit - x0) / (x1 - x0) * (y1 - y0)
            area += (limit - x0) * (y0 + yl) / 2
    return area / limit


def _case(seed: int, ties: bool):
    """Random maps (N, H, W) and masks with several regions per image and all-normal images."""
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(3, 7)), int(rng.integers(7, 15)), int(rng.integers(7, 15))
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(1, n):               # image 0 stays all-normal
        for _ in range(int(rng.integers(0, 4))):   # 0..3 blobs, some touching diagonally
            y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
            masks[i, y:y + int(rng.integers(1, 4)), x:x + int(rng.integers(1, 4))] = 1
    masks[-1, 0, 0], masks[-1, 1, 1] = 1, 1      # two pixels touching by a corner: one region
    maps = rng.random((n, h, w)) + 0.6 * masks * rng.random()
    if ties:
        maps = np.round(maps * int(rng.integers(3, 12))) / 7.0
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_matches_brute_force(seed, ties):
    maps, masks = _case(seed, ties)
    ref_auroc = roc_auc_score(masks.ravel(), maps.ravel())
    for limit in (0.3, 0.07, 1.0):
        ref = brute_aupro(maps.astype(np.float64), masks, limit)
        # default; a few coarse bins (large mixed bins); one bin, a tiny budget and one image per chunk
        # (several gather groups and passes)
        for kw in ({}, {"bins": 5}, {"bins": 1, "max_gather": 3, "chunk_size": 1}):
            r = pixel_metrics(maps, masks, fpr_limit=limit, **kw)
            assert r["pixel_auroc"] == pytest.approx(ref_auroc, abs=1e-12)
            assert r["aupro"] == pytest.approx(ref, abs=1e-12), (limit, kw)
            assert r["pixel_auroc_bound"] == 0.0 and r["aupro_bound"] == 0.0
    assert r["n_regions"] == sum(len(_regions(g)) for g in masks)
    assert r["n_defect_pixels"] == int(masks.sum()) and r["n_pixels"] == masks.size


@pytest.mark.parametrize("seed", range(6))
def test_histogram_result_within_its_bound(seed):
    maps, masks = _case(seed, ties=seed % 2 == 1)
    ref_auroc = roc_auc_score(masks.ravel(), maps.ravel())
    ref = brute_aupro(maps.astype(np.float64), masks, 0.3)
    for bins in (1, 3, 16):
        r = pixel_metrics(maps, masks, tolerance=1.0, bins=bins)
        assert abs(r["pixel_auroc"] - ref_auroc) <= r["pixel_auroc_bound"] + 1e-12
        assert abs(r["aupro"] - ref) <= r["aupro_bound"] + 1e-12
    assert r["pixel_auroc_bound"] > 0  # 16 bins do not separate random maps: the bound says so
    # a tolerance above the bound returns the histogram result, below it the exact one
    exact = pixel_metrics(maps, masks, tolerance=r["pixel_auroc_bound"] / 2, bins=16)
    assert exact["pixel_auroc_bound"] == 0.0 and exact["pixel_auroc"] == pytest.approx(ref_auroc, abs=1e-12)


def test_known_values_and_input_kinds():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[1, :2, :2] = 1
    perfect = masks.astype(np.float32) + 0.01 * np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    r = pixel_metrics(perfect, masks)
    assert r["pixel_auroc"] == 1.0 and r["aupro"] == pytest.approx(1.0)
    inverted = pixel_metrics(-perfect, masks)
    assert inverted["pixel_auroc"] == 0.0 and inverted["aupro"] == 0.0
    flat = pixel_metrics(np.zeros((2, 4, 4)), masks)          # every pixel tied: the diagonal
    assert flat["pixel_auroc"] == 0.5 and flat["aupro"] == pytest.approx(0.15)  # mean of PRO = FPR on [0, 0.3]
    # tensors (float16 too), bool masks, (N, 1, H, W), memory maps: the same numbers
    t = torch.from_numpy(perfect).half()
    assert pixel_metrics(t[:, None], torch.from_numpy(masks).bool()[:, None]) == pixel_metrics(
        t.float().numpy(), masks)


def test_memmap_input(tmp_path):
    maps, masks = _case(3, ties=False)
    np.save(tmp_path / "m.npy", maps)
    np.save(tmp_path / "g.npy", masks)
    r = pixel_metrics(np.load(tmp_path / "m.npy", mmap_mode="r"), np.load(tmp_path / "g.npy", mmap_mode="r"))
    assert r == pixel_metrics(maps, masks)


def test_bad_input():
    maps, masks = _case(0, ties=False)
    with pytest.raises(ValueError, match="masks must have the shape of maps"):
        pixel_metrics(maps, masks[:, :-1])
    with pytest.raises(ValueError, match="maps must be"):
        pixel_metrics(maps[0], masks[0])
    with pytest.raises(ValueError, match="0 and 1"):
        pixel_metrics(maps, masks * 255)
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(bad, masks)
    with pytest.raises(ValueError, match="no defect pixel"):
        pixel_metrics(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="every pixel"):
        pixel_metrics(maps, np.ones_like(masks))
    for kw, what in (({"fpr_limit": 0.0}, "fpr_limit"), ({"fpr_limit": 1.5}, "fpr_limit"),
                     ({"tolerance": -1.0}, "tolerance"), ({"bins": 0}, "bins"), ({"chunk_size": 0}, "chunk_size")):
        with pytest.raises(ValueError, match=what):
            pixel_metrics(maps, masks, **kw)
    with pytest.raises(TypeError, match="masks must be bool or numeric"):
        pixel_metrics(maps, masks.astype(object))


# ---- maps as users use them ------------------------------------------------------------------

def test_resize_and_smooth_match_torch_and_scipy():
    from scipy import ndimage

    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 37, 41, generator=g)
    up = M.resize_maps(m, (74, 82))
    ref = torch.nn.functional.interpolate(m[:, None], size=(74, 82), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref)
    sm = M.smooth_maps(up.double(), sigma=4.0)
    assert M.gaussian_taps(4.0).numel() == 33  # anomalib's / scipy's kernel for sigma 4
    want = np.stack([ndimage.gaussian_filter(a, 4.0, mode="mirror", truncate=4.0) for a in up.double().numpy()])
    np.testing.assert_allclose(sm.numpy(), want, atol=1e-12)
    with pytest.raises(ValueError, match="too small"):
        M.smooth_maps(m[:, :10, :10], sigma=4.0)
    # in chunks, to a memory map: the same numbers
    pp = M.postprocess_maps(m.numpy(), size=(74, 82), sigma=4.0, chunk_size=2)
    np.testing.assert_allclose(pp, M.smooth_maps(up, 4.0).numpy(), atol=1e-6)


def test_postprocess_to_file(tmp_path):
    m = np.random.default_rng(0).random((5, 20, 20)).astype(np.float32)
    out = M.postprocess_maps(m, size=40, sigma=2.0, out=tmp_path / "p.npy", chunk_size=2)
    assert isinstance(out, np.memmap) and out.shape == (5, 40, 40)
    np.testing.assert_allclose(out, M.postprocess_maps(m, size=40, sigma=2.0), atol=1e-6)


def test_normalizers():
    ref = torch.linspace(0, 1, 101).reshape(1, 1, 101)
    n = M.MapNormalizer("quantile", q=(0.5, 0.9)).fit(ref)
    assert (n.lo, n.hi) == pytest.approx((0.5, 0.9))
    out = n(torch.tensor([[[0.2, 0.5, 0.7, 0.95]]]))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0, 0.5, 1.0]]]))
    mm = M.normalize_maps(torch.tensor([[[2.0, 4.0, 6.0]]]))
    torch.testing.assert_close(mm, torch.tensor([[[0.0, 0.5, 1.0]]]))
    with pytest.raises(RuntimeError, match="not fitted"):
        M.MapNormalizer()(ref)
    with pytest.raises(ValueError, match="method"):
        M.MapNormalizer("zscore")


def test_localize_and_evaluate_maps_resize_to_the_masks():
    torch.manual_seed(0)
    model = models.build("conv", in_channels=1, channels=[4], latent=4, input_shape=[16, 16]).eval()
    x = torch.rand(6, 1, 16, 16)
    masks = np.zeros((6, 32, 32), np.uint8)
    masks[2:, 8:20, 10:16] = 1
    m, processed = scoring.localize(model, x, masks, score="ssim", sigma=2.0)
    _, raw = scoring.score(model, x, score="ssim", maps=True, progress=False)
    want = M.smooth_maps(M.resize_maps(raw, 32), 2.0).numpy()
    np.testing.assert_allclose(processed, want, atol=1e-6)
    ref = pixel_metrics(want, masks)
    assert m["pixel_auroc"] == pytest.approx(ref["pixel_auroc"]) and m["aupro"] == pytest.approx(ref["aupro"])
    assert m["map"] == "1 - SSIM" and m["sigma"] == 2.0
    with pytest.raises(ValueError, match="one mask per map"):
        scoring.evaluate_maps(raw, masks[:3])
    with pytest.raises(ValueError, match="no .masks"):
        scoring.localize(model, x)


@pytest.mark.gpu
def test_cuda_tensors():
    maps, masks = _case(2, ties=True)
    want = pixel_metrics(maps, masks)
    assert pixel_metrics(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda()) == want
